"""The gate as the request path uses it: every grab, swap target and waitlist join asks here.

A course the gate has not loaded yet (a new process, or Redis lost its data) is loaded from
Postgres once per process and asked again, so no caller ever sees `missing`; an id Postgres
could not hold is simply no course. `refusal` is the one table from a decision that is not a
seat to the answer a resident gets.

Grabs and swap targets of a course the gate refused a moment ago (sold out, not open yet) are
answered from the process's `GateMemory` without Redis (see memory.py for the bound); a
waitlist join always asks the gate, as it must tell a free seat from none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from booking.core.errors import ApiError, Conflict, NotFound, Unavailable
from booking.core.fields import storable_id
from booking.seats.gate import Decision, Outcome, SeatGate
from booking.seats.memory import REMEMBERED, GateMemory
from booking.seats.reconcile import CourseLoader

NO_COURSE = Decision(Outcome.NO_COURSE)
ASK_ONLY = 0  # a waitlist id no row has (ids start at 1): wait.lua only answers
LOADS = 3  # loads of a course the gate keeps losing before a grab is told to retry


# What the gate answers for a course closed for a reason of its own: not open (a grab), or a
# free seat (a waitlist join, which does not look at the opening).
CLOSED_LOOKING = (Outcome.NOT_OPEN, Outcome.SEATS_AVAILABLE)
# Why a course the gate calls not open is closed, when it is for a reason of its own (a release
# whose draw gives its seats); None: it just opens later.
ClosedBecause = Callable[[int, Decision], Awaitable[ApiError | None]]


class Seats:
    def __init__(self, gate: SeatGate, loader: CourseLoader,
                 memory: GateMemory | None = None,
                 closed_because: ClosedBecause | None = None) -> None:
        self.gate = gate
        self.loader = loader
        self.memory = memory  # None: every grab asks the gate
        self.closed_because = closed_because

    async def why_not(self, course_id: int, decision: Decision) -> ApiError:
        """The answer to a decision that gives the caller nothing new, as `refusal`, except
        that a course closed for a reason of its own says so (`closed_because`)."""
        if decision.outcome in CLOSED_LOOKING and self.closed_because is not None:
            reason = await self.closed_because(course_id, decision)
            if reason is not None:
                return reason
        return refusal(decision)

    def remembered(self, course_id: int, resident_id: str) -> Decision | None:
        """The refusal this process's memory holds for the grab, if any (no Redis)."""
        return None if self.memory is None else self.memory.answer(course_id, resident_id)

    async def take(self, course_id: int, resident_id: str, booking_id: str) -> Decision:
        """Take a seat (grab.lua); TAKEN leaves it pending until the booking is written. A
        refusal the memory still holds is answered without asking the gate."""
        memory = self.memory
        if memory is not None:
            remembered = memory.answer(course_id, resident_id)
            if remembered is not None:
                return remembered
        decision = await self._asked(course_id, lambda: self.gate.grab(course_id, resident_id,
                                                                       booking_id))
        if memory is not None and decision.outcome in REMEMBERED:
            await memory.learn(course_id)
        return decision

    async def wait(self, course_id: int, resident_id: str, waitlist_id: int) -> Decision:
        """Put a committed waitlist place in the gate's queue (wait.lua); waitlist id ASK_ONLY
        only asks whether the resident would wait now. Call it holding no pool connection: a
        course the gate lost is loaded here, and loading takes a connection of its own."""
        return await self._asked(course_id, lambda: self.gate.wait(course_id, resident_id,
                                                                   waitlist_id))

    async def _asked(self, course_id: int, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        """The gate's decision; a course it does not know is loaded and asked again. Redis can
        lose the course again between the load and the ask (a FLUSHALL, a failover): after
        LOADS tries the answer stays MISSING, which `refusal` turns into a 503 to retry."""
        if not storable_id(course_id):
            return NO_COURSE
        decision = await ask()
        for _ in range(LOADS):
            if decision.outcome is not Outcome.MISSING:
                break
            if await self.loader.load(course_id) is None:
                return NO_COURSE
            decision = await ask()
        return decision

    async def seats_left(self, course_ids: Sequence[int]) -> list[int | None]:
        """Live seats left per course, loading any course the gate does not know yet; None
        for a course Postgres does not have."""
        counts = await self.gate.seats_left(course_ids)
        for i, count in enumerate(counts):
            if count is None:
                loaded = await self.loader.load(course_ids[i])
                counts[i] = None if loaded is None else max(loaded.seats_left, 0)
        return counts



def not_open(opens_at_ms: int) -> Conflict:
    opens_at = datetime.fromtimestamp(opens_at_ms / 1000, UTC)
    wait_s = max(1, math.ceil(opens_at_ms / 1000 - time.time()))
    return Conflict(f"Sales open at {opens_at.isoformat()}.", code="not_open",
                    headers={"Retry-After": str(wait_s)},
                    extra={"opens_at": opens_at.isoformat()})


SOLD_OUT = Conflict("Every seat of this course is taken.", code="sold_out")
COURSE_CANCELLED = Conflict("This course is cancelled.", code="course_cancelled")
ALREADY_BOOKED = Conflict("You already hold a seat in that course.", code="already_booked")
SEATS_AVAILABLE = Conflict("This course has a free seat: grab it instead of waiting.",
                           code="seats_available")
NO_SUCH_COURSE = NotFound.of("course")
GATE_RELOADING = Unavailable("The seats of this course are being reloaded; please try again.")

_REFUSALS: dict[Outcome, Callable[[Decision], ApiError]] = {
    Outcome.SOLD_OUT: lambda _: SOLD_OUT,
    Outcome.NOT_OPEN: lambda d: not_open(d.opens_at_ms),
    Outcome.CANCELLED: lambda _: COURSE_CANCELLED,
    Outcome.NO_COURSE: lambda _: NO_SUCH_COURSE,
    Outcome.HELD: lambda _: ALREADY_BOOKED,
    Outcome.SEATS_AVAILABLE: lambda _: SEATS_AVAILABLE,
    Outcome.MISSING: lambda _: GATE_RELOADING,
}


def refusal(decision: Decision) -> ApiError:
    """The answer to a decision that gives the caller nothing new (a shared instance: raise
    `.again()`, or send it with `answer`)."""
    return _REFUSALS[decision.outcome](decision)
