"""Bookings: the grab (gate, then ledger), cancel, swap, and the lists residents and venues see.

`Bookings` is the domain's service and knows nothing of HTTP; the `/v1` handlers at the bottom
(and later the pages) receive it by dependency injection and call it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter

from booking.checkin import checkin_code, checkin_token
from booking.core.auth import Principal, check_owner, requires
from booking.core.errors import ApiError, Conflict, NotFound, RateLimited, Unavailable, answer
from booking.core.fields import MAX_ID, storable_id
from booking.core.observability import count_grab
from booking.core.settings import Settings
from booking.ledger import term_cap
from booking.ledger.commit import BookingLedger, CommitFailed, NewBooking
from booking.ledger.locks import lock_courses
from booking.ledger.promotions import free_seat
from booking.ledger.refunds import owe_refunds
from booking.ledger.states import is_active
from booking.seats import Outcome
from booking.seats.quota import Taken, TermQuota
from booking.seats.ratelimit import RateLimiter
from booking.seats.seating import (
    ALREADY_BOOKED,
    COURSE_CANCELLED,
    SOLD_OUT,
    Seats,
    not_open,
    refusal,
)

log = logging.getLogger(__name__)

# How long a repeated grab waits for its twin (still being written) to be committed.
TWIN_WAIT_S = 3.0
CourseId = Annotated[int, Parameter(description="Course id")]


class BookingOut(msgspec.Struct):
    id: str
    course_id: int
    resident_id: str
    status: str  # confirmed, held (a paid course until its payment arrives), cancelled, expired
    created_at: datetime
    expires_at: datetime | None = None  # when a hold lapses unless paid


class CheckinOut(msgspec.Struct):
    booking_id: str
    token: str  # what the booking's QR code holds; a venue's desk checks it
    code: str  # 8 characters to type when a camera fails


class RosterEntryOut(msgspec.Struct):
    """An active booking as the venue's roster shows it: the phone masked (138****0001)."""

    booking_id: str
    resident_id: str
    phone: str  # masked; a resident without a phone on file: the id, shortened
    status: str
    created_at: datetime
    checkins: int  # lessons checked in so far


class SwapIn(msgspec.Struct, forbid_unknown_fields=True):
    course_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]


@dataclass(frozen=True, slots=True)
class Grabbed:
    booking: BookingOut
    new: bool  # False: the booking this resident already held


COLUMNS = "id::text AS id, course_id, resident_id, status, created_at, expires_at"
ACTIVE = "booking_active(status)"
SELECT_BOOKING = f"SELECT {COLUMNS} FROM bookings WHERE id = $1"
SELECT_ACTIVE = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND resident_id = $2 AND {ACTIVE}
"""
CANCEL_BOOKING = f"""
UPDATE bookings SET status = 'cancelled', cancelled_at = now()
WHERE id = $1 AND resident_id = $2 AND {ACTIVE} RETURNING {COLUMNS}, paid_at
"""
SELECT_OWN = f"SELECT {COLUMNS} FROM bookings WHERE id = $1 AND resident_id = $2"
SELECT_OWN_FOR_CANCEL = """
SELECT b.id::text AS id, b.course_id, b.resident_id, b.status, b.created_at, b.expires_at,
       now() > coalesce(c.cancel_deadline, c.starts_at) AS too_late
FROM bookings b JOIN courses c ON c.id = b.course_id WHERE b.id = $1 AND b.resident_id = $2
"""
INSERT_SWAPPED = f"""
INSERT INTO bookings (id, course_id, resident_id, status, expires_at)
SELECT $1, c.id, $3, new_booking_status(hold.s), new_booking_expiry(hold.s)
FROM courses c, course_hold_s(c.price_cents, c.hold_minutes) AS hold(s)
WHERE c.id = $2 AND c.status = 'published'
RETURNING {COLUMNS}
"""
MY_BOOKINGS = f"""
SELECT {COLUMNS} FROM bookings WHERE resident_id = $1 ORDER BY created_at DESC LIMIT 500
"""
COURSE_VENUE = "SELECT venue_id FROM courses WHERE id = $1"
ROSTER = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND {ACTIVE} ORDER BY created_at
"""
ROSTER_DETAILS = """
SELECT b.id::text AS id, b.resident_id, r.phone, b.status, b.created_at,
       (SELECT count(*) FROM attendance a WHERE a.booking_id = b.id) AS checkins
FROM bookings b LEFT JOIN residents r ON r.id = b.resident_id
WHERE b.course_id = $1 AND booking_active(b.status) ORDER BY b.created_at, b.id
"""
CHECKIN_COUNTS = """
SELECT b.course_id, count(*) AS checkins FROM attendance a JOIN bookings b ON b.id = a.booking_id
WHERE b.course_id = ANY($1::bigint[]) GROUP BY b.course_id
"""
SHORT_ID = 8  # characters of a resident id shown where no phone is on file

DEADLINE_PASSED = Conflict("The cancellation deadline of this course has passed.",
                           code="cancel_deadline_passed")
NOT_ACTIVE = Conflict("This booking is no longer active.", code="not_active")
SAME_COURSE = Conflict("That is the course you already hold.", code="same_course")
NOT_SAVED = "Your seat could not be saved; please try again."


def masked_phone(phone: str | None, resident_id: str) -> str:
    """`138****0001`: what a venue sees of a resident's phone; without one, the resident's id
    shortened (never the whole id)."""
    if phone and len(phone) == 11:
        return f"{phone[:3]}****{phone[7:]}"
    return resident_id if len(resident_id) <= SHORT_ID else f"{resident_id[:SHORT_ID]}…"


def booking_out(row: asyncpg.Record) -> BookingOut:
    return BookingOut(row["id"], row["course_id"], row["resident_id"], row["status"],
                      row["created_at"], row["expires_at"])


class Bookings:
    def __init__(self, seats: Seats, ledger: BookingLedger, limiter: RateLimiter,
                 pool: asyncpg.Pool, quota: TermQuota | None = None) -> None:
        self.seats = seats
        self.ledger = ledger
        self.limiter = limiter
        self.pool = pool
        self.quota = quota  # None: the term cap is Postgres's alone (it refuses the write)
        self.caps = term_cap.TermCaps(pool)

    # --- the grab -----------------------------------------------------------------------------

    async def limit(self, resident_id: str, address: str) -> ApiError | None:
        """The 429 for a resident (or address) over the grab limits; None: go ahead."""
        wait_s = await self.limiter.wait_s(resident_id, address)
        if not wait_s:
            return None
        count_grab("rate_limited")
        return RateLimited.waiting(wait_s, "Too many grabs; please wait a moment.")

    async def grab_limited(self, course_id: int, principal: Principal,
                           address: str) -> Grabbed | ApiError:
        """A resident's grab as both of its routes answer it (Litestar's handler below and the
        fast path in fast_grab.py): the rate limits first, then the grab."""
        limited = await self.limit(principal.sub, address)
        if limited is not None:
            return limited
        return await self.grab(course_id, principal.sub, principal.tier)

    async def grab(self, course_id: int, resident_id: str,
                   tier: str | None = None) -> Grabbed | ApiError:
        """Take a seat and write the booking; or the booking already held; or why not.
        Refusals are returned, not raised (on release night almost every answer is one, and
        raising costs more than the rest of a sold-out answer); only a store that fails
        raises. A course of a first-come release opens at the caller's own opening (their
        `tier`'s, if the release names it); one of a capped term takes the resident's quota
        first."""
        rules = await self.caps.of_course(course_id) if storable_id(course_id) else None
        if rules is None:
            return await self._grab(course_id, resident_id)
        if rules.mode == "fcfs" and rules.tier_openings:
            opens_at = rules.opens_for(tier)
            if opens_at.timestamp() > time.time():
                count_grab(Outcome.NOT_OPEN.value)
                return not_open(int(opens_at.timestamp() * 1000))
        if rules.cap is None or self.quota is None:
            return await self._grab(course_id, resident_id)
        remembered = self.seats.remembered(course_id, resident_id)
        if remembered is not None:  # a "no" this process knows costs no quota
            count_grab(remembered.outcome.value)
            return await self.seats.why_not(course_id, remembered)
        taken = await self._take_quota(resident_id, course_id, rules)
        if isinstance(taken, ApiError):
            return taken
        answer: Grabbed | ApiError | None = None
        try:
            answer = await self._grab(course_id, resident_id)
        finally:
            await self._keep_or_give_back(resident_id, course_id, taken, answer)
        return answer

    async def _take_quota(self, resident_id: str, course_id: int, rules: term_cap.CourseRules,
                          instead_of: int | None = None) -> Taken | ApiError:
        """The resident's quota for the course, or 409 `term_cap_reached`. The quota's refusal
        is checked against Postgres: one it counted too many in (a lost give-back) is rebuilt
        from Postgres and asked again, so a refusal is never the quota's word alone."""
        assert self.quota is not None and rules.cap is not None
        term, cap = rules.term, rules.cap
        taken = await self.quota.take(resident_id, course_id, term, cap, instead_of)
        if taken.ok:
            return taken
        held = await self.caps.held(resident_id, term)
        if len([c for c in held if c != instead_of]) < cap:
            await self.quota.rebuild(resident_id, await self.caps.held_capped(resident_id))
            taken = await self.quota.take(resident_id, course_id, term, cap, instead_of)
            if taken.ok:
                return taken
        in_flight = [c for c in await self.quota.in_flight(resident_id, term) if c != course_id]
        return term_cap.cap_refusal(term, cap, held, in_flight)

    async def _keep_or_give_back(self, resident_id: str, course_id: int, taken: Taken,
                                 answer: Grabbed | ApiError | None) -> None:
        """A booking holds the seat: the quota is settled; no booking (a refusal, a failed
        write, a store that failed): a quota this grab took goes back."""
        assert self.quota is not None
        if isinstance(answer, Grabbed):
            await self.quota.settle(resident_id, course_id)
        elif taken.new:
            await self.quota.give_back(resident_id, course_id)

    async def _grab(self, course_id: int, resident_id: str) -> Grabbed | ApiError:
        booking_id = ""  # a new booking's id only when the gate is asked (uuid4 costs 5 us)
        decision = self.seats.remembered(course_id, resident_id)
        if decision is None:
            booking_id = str(uuid.uuid4())
            decision = await self.seats.take(course_id, resident_id, booking_id)
        count_grab(decision.outcome.value)
        if decision.outcome is Outcome.TAKEN:
            return await self._commit(course_id, resident_id, booking_id)
        if decision.outcome is Outcome.HELD:
            return Grabbed(await self._held_booking(str(decision.booking_id)), new=False)
        if decision.outcome is Outcome.NOT_OPEN:
            return await self.seats.why_not(course_id, decision)
        return refusal(decision)

    async def _commit(self, course_id: int, resident_id: str,
                      booking_id: str) -> Grabbed | ApiError:
        """Write the row the gate allowed. Postgres decides its status and a hold's expiry (by
        its own clock and the course row). A failed write has given its seat back (see
        BookingLedger.record); a refusal by Postgres means the gate was wrong about the course,
        so it is reloaded and the answer is the ledger's."""
        try:
            row = await self.ledger.record(NewBooking(booking_id, course_id, resident_id))
        except CommitFailed as exc:
            log.warning("booking %s not committed: %s", booking_id, exc)
            count_grab("not_committed")
            return await self._ledger_refusal(course_id, resident_id, exc.constraint)
        body = BookingOut(booking_id, course_id, resident_id, row.status, row.created_at,
                          row.expires_at)
        return Grabbed(body, new=True)

    async def _ledger_refusal(self, course_id: int, resident_id: str,
                              constraint: str | None) -> Grabbed | ApiError:
        if constraint is None:
            return Unavailable(NOT_SAVED)
        if constraint == term_cap.CONSTRAINT:  # the gate was right about the seat
            return await term_cap.cap_reached(self.pool, course_id, resident_id)
        await self.seats.loader.load(course_id)
        if constraint == "courses_not_oversold":
            return SOLD_OUT
        if constraint == "courses_cancelled_take_no_bookings":
            return COURSE_CANCELLED
        row = await self.pool.fetchrow(SELECT_ACTIVE, course_id, resident_id)  # a faster twin
        return Unavailable(NOT_SAVED) if row is None else Grabbed(booking_out(row), new=False)

    async def _held_booking(self, booking_id: str) -> BookingOut:
        """The booking a repeated grab already holds; waits briefly if it is still being
        written."""
        deadline = time.monotonic() + TWIN_WAIT_S
        while True:
            row = await self.pool.fetchrow(SELECT_BOOKING, booking_id)
            if row is not None:
                return booking_out(row)
            if time.monotonic() > deadline:
                raise Unavailable("Your earlier grab of this course is still being saved; "
                                  "please try again.")
            await asyncio.sleep(0.02)

    # --- cancel and swap ----------------------------------------------------------------------

    async def _own_booking(self, booking_id: uuid.UUID, resident_id: str) -> asyncpg.Record:
        """The resident's booking with its status and whether its cancel deadline has passed."""
        row = await self.pool.fetchrow(SELECT_OWN_FOR_CANCEL, booking_id, resident_id)
        if row is None:
            raise NotFound.of("booking of yours")
        return row

    async def cancel(self, booking_id: uuid.UUID, resident_id: str) -> BookingOut:
        """Cancel a booking or hold (until the course's cancel deadline); the seat goes to the
        first resident waiting, or can be grabbed again at once."""
        gate, pool = self.seats.gate, self.pool
        row = await self._own_booking(booking_id, resident_id)
        if not is_active(row["status"]):
            # Cancelled before: give the seat back again in case that cancel's release never ran.
            await free_seat(pool, gate, row["course_id"], resident_id, row["id"])
            return booking_out(row)
        if row["too_late"]:
            raise DEADLINE_PASSED.again()
        await gate.mark_leaving(row["course_id"], resident_id, row["id"])
        cancelled = await self._write_cancel(booking_id, resident_id, row["course_id"])
        if cancelled is None:  # a twin request (or the hold's expiry) ended it a moment ago
            return booking_out(await pool.fetchrow(SELECT_OWN, booking_id, resident_id))
        if not await free_seat(pool, gate, row["course_id"], resident_id, row["id"]):
            await self.seats.loader.load(row["course_id"])
        return booking_out(cancelled)

    async def _write_cancel(self, booking_id: uuid.UUID, resident_id: str,
                            course_id: int) -> asyncpg.Record | None:
        """One transaction: the course row locked, the booking cancelled and, if it was paid,
        its refund owed and the resident told. None: it was no longer active."""
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_courses(conn, [course_id])
            cancelled = await conn.fetchrow(CANCEL_BOOKING, booking_id, resident_id)
            if cancelled is not None and cancelled["paid_at"] is not None:
                await owe_refunds(conn, [cancelled["id"]], "cancelled")
        return cancelled

    async def swap(self, booking_id: uuid.UUID, resident_id: str,
                   course_id: int) -> BookingOut:
        """Trade a booking for a seat in another course in one step, or keep the old one."""
        old = await self._own_booking(booking_id, resident_id)
        if not is_active(old["status"]):
            raise NOT_ACTIVE.again()
        if old["too_late"]:
            raise DEADLINE_PASSED.again()
        if course_id == old["course_id"]:
            raise SAME_COURSE.again()
        rules = await self.caps.of_course(course_id)
        if rules is None or rules.cap is None or self.quota is None:
            return await self._swap(old, resident_id, course_id)
        taken = await self._take_quota(resident_id, course_id, rules,
                                       instead_of=old["course_id"])
        if isinstance(taken, ApiError):
            raise taken
        swapped: BookingOut | None = None
        try:
            swapped = await self._swap(old, resident_id, course_id)
        finally:
            await self._keep_or_give_back(resident_id, course_id, taken,
                                          None if swapped is None else Grabbed(swapped, True))
        return swapped

    async def _swap(self, old: asyncpg.Record, resident_id: str, course_id: int) -> BookingOut:
        new_id = str(uuid.uuid4())
        decision = await self.seats.take(course_id, resident_id, new_id)
        if decision.outcome is not Outcome.TAKEN:
            raise (await self.seats.why_not(course_id, decision)).again()
        return await self._write_swap(old, new_id, course_id, resident_id)

    async def _write_swap(self, old: asyncpg.Record, new_id: str, course_id: int,
                          resident_id: str) -> BookingOut:
        """One transaction: both course rows locked in id order, the old booking cancelled
        (its refund owed if it was paid), the new one in. Only then the old seat is freed; any
        failure gives the new seat back and leaves the old booking as it was."""
        gate = self.seats.gate
        await gate.mark_leaving(old["course_id"], resident_id, old["id"])
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await lock_courses(conn, [old["course_id"], course_id])
                cancelled = await conn.fetchrow(CANCEL_BOOKING, uuid.UUID(old["id"]),
                                                resident_id)
                if cancelled is None:
                    raise NOT_ACTIVE.again()
                row = await conn.fetchrow(INSERT_SWAPPED, new_id, course_id, resident_id)
                if row is None:
                    raise COURSE_CANCELLED.again()
                if cancelled["paid_at"] is not None:
                    await owe_refunds(conn, [old["id"]], "swapped")
        except (ApiError, asyncpg.PostgresError) as exc:
            await self._give_back(course_id, resident_id, new_id)
            # the old seat stays theirs
            await gate.settle([(old["course_id"], resident_id, old["id"])])
            if getattr(exc, "constraint_name", None) == term_cap.CONSTRAINT:
                raise await term_cap.cap_reached(self.pool, course_id, resident_id) from exc
            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):  # gate, ledger differ
                await self.seats.loader.load(course_id)
                raise _swap_refusal(exc) from exc
            raise
        await gate.settle([(course_id, resident_id, new_id)])
        await free_seat(self.pool, gate, old["course_id"], resident_id, old["id"])
        return booking_out(row)

    async def _give_back(self, course_id: int, resident_id: str, booking_id: str) -> None:
        try:
            await free_seat(self.pool, self.seats.gate, course_id, resident_id, booking_id)
        except Exception as exc:  # the reconciler gives it back after the pending timeout
            log.warning("could not give back seat of %s: %s", booking_id, exc)

    async def checkin(self, booking_id: uuid.UUID, resident_id: str, secret: str) -> CheckinOut:
        """The check-in token and code of the resident's active booking (its QR on the page)."""
        row = await self._own_booking(booking_id, resident_id)
        if not is_active(row["status"]):
            raise NOT_ACTIVE.again()
        return CheckinOut(row["id"], checkin_token(secret, row["id"]),
                          checkin_code(secret, row["id"]))

    # --- lists --------------------------------------------------------------------------------

    async def of_resident(self, resident_id: str) -> list[BookingOut]:
        """A resident's bookings, newest first, cancelled ones included."""
        return [booking_out(row) for row in await self.pool.fetch(MY_BOOKINGS, resident_id)]

    async def _check_course(self, course_id: int, principal: Principal) -> None:
        """NotFound without such a course; Forbidden when it is another venue's."""
        venue_id = await self.pool.fetchval(COURSE_VENUE, course_id) \
            if storable_id(course_id) else None
        if venue_id is None:
            raise NotFound.of("course")
        check_owner(principal, venue_id)

    async def roster(self, course_id: int, principal: Principal) -> list[BookingOut]:
        """The active bookings of a course, for its venue or an operator."""
        await self._check_course(course_id, principal)
        return [booking_out(row) for row in await self.pool.fetch(ROSTER, course_id)]

    async def roster_details(self, course_id: int,
                             principal: Principal) -> list[RosterEntryOut]:
        """The active bookings of a course with masked phones and check-ins, for its venue
        or an operator (what the venue's roster page and its CSV show)."""
        await self._check_course(course_id, principal)
        rows = await self.pool.fetch(ROSTER_DETAILS, course_id)
        return [RosterEntryOut(row["id"], row["resident_id"],
                               masked_phone(row["phone"], row["resident_id"]), row["status"],
                               row["created_at"], row["checkins"]) for row in rows]

    async def checkin_counts(self, course_ids: list[int]) -> dict[int, int]:
        """Check-ins so far per course (courses without any are left out)."""
        rows = await self.pool.fetch(CHECKIN_COUNTS, course_ids)
        return {row["course_id"]: row["checkins"] for row in rows}


def _swap_refusal(exc: asyncpg.IntegrityConstraintViolationError) -> ApiError:
    if getattr(exc, "constraint_name", None) == "courses_cancelled_take_no_bookings":
        return COURSE_CANCELLED.again()
    if isinstance(exc, asyncpg.UniqueViolationError):
        return ALREADY_BOOKED.again()
    return SOLD_OUT.again()


# --- /v1 --------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]  # request.user: the principal the middleware checked
GRAB_PATH = "/v1/courses/{course_id:int}/bookings"


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


# Most grabs never reach this handler: fast_grab.py answers a canonical one before Litestar
# routes it. This one answers the rest (e.g. `/v1/courses/007/bookings`) and documents the route.
@post(GRAB_PATH, operation_id="grabSeat", tags=["bookings"],
      status_code=201, **requires("resident", errors=(404, 409, 429), also={
          200: ResponseSpec(BookingOut, description="The booking this resident already holds")}))
async def grab_seat(request: Caller, course_id: CourseId,
                    bookings: NamedDependency[Bookings]) -> Response[BookingOut]:
    """Grab a seat: 201 with a new booking, 200 with the one already held, or 409 saying why not."""
    result = await bookings.grab_limited(course_id, request.user, _address(request))
    if isinstance(result, ApiError):
        return answer(result)
    return Response(result.booking, status_code=201 if result.new else 200)


@delete("/v1/bookings/{booking_id:uuid}", operation_id="cancelBooking", tags=["bookings"],
        status_code=200, **requires("resident", errors=(404, 409)))
async def cancel_booking(request: Caller, booking_id: FromPath[uuid.UUID],
                         bookings: NamedDependency[Bookings]) -> BookingOut:
    """Cancel your booking or hold (until the course's cancel deadline); the seat goes to the
    first resident waiting, or can be grabbed again at once."""
    return await bookings.cancel(booking_id, request.user.sub)


@post("/v1/bookings/{booking_id:uuid}/swap", operation_id="swapBooking", tags=["bookings"],
      status_code=201, **requires("resident", errors=(404, 409, 413, 429)))
async def swap_booking(request: Caller, booking_id: FromPath[uuid.UUID], data: JSONBody[SwapIn],
                       bookings: NamedDependency[Bookings]) -> BookingOut:
    """Trade your booking for a seat in another course in one step: 201 with the new booking
    (the old one cancelled, its seat to the waitlist), or 409 and you keep the old one."""
    limited = await bookings.limit(request.user.sub, _address(request))
    if limited is not None:  # a swap takes a seat too: the same limits as a grab
        raise limited
    return await bookings.swap(booking_id, request.user.sub, data.course_id)


@get("/v1/me/bookings", operation_id="myBookings", tags=["bookings"], **requires("resident"))
async def my_bookings(request: Caller, bookings: NamedDependency[Bookings]) -> list[BookingOut]:
    """Your bookings, newest first, cancelled ones included."""
    return await bookings.of_resident(request.user.sub)


@get("/v1/bookings/{booking_id:uuid}/checkin", operation_id="bookingCheckin",
     tags=["bookings"], **requires("resident", errors=(404, 409)))
async def booking_checkin(request: Caller, booking_id: FromPath[uuid.UUID],
                          bookings: NamedDependency[Bookings],
                          settings: NamedDependency[Settings]) -> CheckinOut:
    """The check-in token (what the QR code on your bookings page holds) and the 8-character
    code of your active booking."""
    return await bookings.checkin(booking_id, request.user.sub, settings.secret)


@get("/v1/courses/{course_id:int}/bookings", operation_id="courseRoster", tags=["bookings"],
     **requires("venue", "operator", errors=(404,)))
async def course_roster(request: Caller, course_id: CourseId,
                        bookings: NamedDependency[Bookings]) -> list[BookingOut]:
    """The active bookings of a course (its venue or an operator)."""
    return await bookings.roster(course_id, request.user)


@get("/v1/courses/{course_id:int}/roster", operation_id="courseRosterDetails",
     tags=["bookings"], **requires("venue", "operator", errors=(404,)))
async def course_roster_details(request: Caller, course_id: CourseId,
                                bookings: NamedDependency[Bookings]) -> list[RosterEntryOut]:
    """The active bookings of a course with each resident's phone masked (138****0001) and
    their check-ins so far (its venue or an operator); the venue's roster page shows these."""
    return await bookings.roster_details(course_id, request.user)


HANDLERS: list[Any] = [grab_seat, cancel_booking, swap_booking, my_bookings, booking_checkin,
                       course_roster, course_roster_details]
