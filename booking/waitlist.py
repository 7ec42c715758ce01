"""The waitlist of a sold-out course: join, see your place, leave.

A place is a Postgres row (its id is the order of arrival) and an entry in the gate's copy of
the queue. The gate learns of a place only once its row is committed: a freed seat the gate hands
to a place Postgres might still lose would be voided and go to a racer. So a join
1. asks the gate whether the resident would wait (holding no connection: a course the gate lost
   is loaded here, and loading needs a connection of its own);
2. writes the row and commits (one short transaction, the course row share-locked so that a
   course cancellation, which clears the waitlist, cannot slip in between);
3. puts the place in the gate's queue (wait.lua); should the gate now say a seat is free (one
   was freed between 1 and 3), the resident already holds one, or the course is cancelled, the
   place is ended again and the resident told so: nobody waits for a course with a free seat.
No step holds a connection while it waits for another. Freed seats reach the queue through
booking/ledger/promotions.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from booking.bookings import masked_phone
from booking.core.auth import Principal, check_owner, requires
from booking.core.errors import NotFound, Unavailable
from booking.core.fields import storable_id
from booking.seats import Outcome
from booking.seats.seating import ALREADY_BOOKED, ASK_ONLY, COURSE_CANCELLED, Seats


class WaitlistEntryOut(msgspec.Struct):
    course_id: int
    resident_id: str
    status: str  # waiting, or left after DELETE
    position: int | None  # 1 = next to get a freed seat; None once left
    joined_at: datetime


class CourseWaitingOut(msgspec.Struct):
    """A place in a course's waitlist as its venue sees it: the phone masked (138****0001)."""

    position: int  # 1 = next to get a freed seat
    resident_id: str
    phone: str  # masked; a resident without a phone on file: the id, shortened
    joined_at: datetime


COURSE_STATUS = "SELECT status FROM courses WHERE id = $1 FOR SHARE"
JOIN = """
INSERT INTO waitlist (course_id, resident_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING id
"""
MY_PLACE = """
SELECT w.id, w.course_id, w.resident_id, w.status, w.joined_at,
       (SELECT count(*) FROM waitlist ahead WHERE ahead.course_id = w.course_id
          AND ahead.status = 'waiting' AND ahead.id <= w.id) AS position
FROM waitlist w WHERE w.course_id = $1 AND w.resident_id = $2 AND w.status = 'waiting'
"""
LEAVE = """
UPDATE waitlist SET status = 'left', updated_at = now()
WHERE course_id = $1 AND resident_id = $2 AND status = 'waiting'
RETURNING course_id, resident_id, status, joined_at
"""
PLACE_ID = """
SELECT id FROM waitlist WHERE course_id = $1 AND resident_id = $2 AND status = 'waiting'
"""
END_PLACE = """
UPDATE waitlist SET status = 'cleared', updated_at = now() WHERE id = $1 AND status = 'waiting'
"""
MY_PLACES = """
SELECT w.id, w.course_id, w.resident_id, w.status, w.joined_at,
       (SELECT count(*) FROM waitlist ahead WHERE ahead.course_id = w.course_id
          AND ahead.status = 'waiting' AND ahead.id <= w.id) AS position
FROM waitlist w WHERE w.resident_id = $1 AND w.status = 'waiting'
ORDER BY w.joined_at DESC LIMIT 200
"""
HOLDS_A_SEAT = """
SELECT 1 FROM bookings WHERE course_id = $1 AND resident_id = $2
  AND booking_active(status)
"""

COURSE_VENUE = "SELECT venue_id FROM courses WHERE id = $1"
COURSE_QUEUE = """
SELECT row_number() OVER (ORDER BY w.id) AS position, w.resident_id, r.phone, w.joined_at
FROM waitlist w LEFT JOIN residents r ON r.id = w.resident_id
WHERE w.course_id = $1 AND w.status = 'waiting' ORDER BY w.id
"""
WAITING_COUNTS = """
SELECT course_id, count(*) AS waiting FROM waitlist
WHERE course_id = ANY($1::bigint[]) AND status = 'waiting' GROUP BY course_id
"""


def entry_out(row: asyncpg.Record) -> WaitlistEntryOut:
    waiting = row["status"] == "waiting"
    return WaitlistEntryOut(row["course_id"], row["resident_id"], row["status"],
                            int(row["position"]) if waiting else None, row["joined_at"])


CourseId = Annotated[int, Parameter(description="Course id")]


class Waitlist:
    """The waitlist domain's service: what the `/v1` handlers and the pages call."""

    def __init__(self, seats: Seats, pool: asyncpg.Pool) -> None:
        self.seats = seats
        self.pool = pool

    async def place(self, course_id: int, resident_id: str) -> WaitlistEntryOut:
        """The resident's waiting place in a course, or NotFound."""
        mine = await self._mine(course_id, resident_id)
        if mine is None:
            raise NotFound.of("waitlist place of yours")
        return entry_out(mine)

    async def of_resident(self, resident_id: str) -> list[WaitlistEntryOut]:
        """Every course the resident waits for, with the current position, newest first."""
        return [entry_out(row) for row in await self.pool.fetch(MY_PLACES, resident_id)]

    async def of_course(self, course_id: int,
                        principal: Principal) -> list[CourseWaitingOut]:
        """Who waits for a course, first in line first, phones masked: for its venue or an
        operator."""
        venue_id = await self.pool.fetchval(COURSE_VENUE, course_id) \
            if storable_id(course_id) else None
        if venue_id is None:
            raise NotFound.of("course")
        check_owner(principal, venue_id)
        rows = await self.pool.fetch(COURSE_QUEUE, course_id)
        return [CourseWaitingOut(int(row["position"]), row["resident_id"],
                                 masked_phone(row["phone"], row["resident_id"]),
                                 row["joined_at"]) for row in rows]

    async def waiting_counts(self, course_ids: list[int]) -> dict[int, int]:
        """How many wait per course (courses nobody waits for are left out)."""
        rows = await self.pool.fetch(WAITING_COUNTS, course_ids)
        return {row["course_id"]: row["waiting"] for row in rows}

    async def _mine(self, course_id: int, resident_id: str) -> asyncpg.Record | None:
        if not storable_id(course_id):
            return None
        return await self.pool.fetchrow(MY_PLACE, course_id, resident_id)

    async def join(self, course_id: int, resident_id: str) -> tuple[WaitlistEntryOut, bool]:
        """Wait for a sold-out course: the place, and whether it is new (False: waiting
        already). 409 `seats_available` when a seat is free (grab it instead), or
        `already_booked`."""
        if not storable_id(course_id):
            raise NotFound.of("course")
        mine = await self._mine(course_id, resident_id)
        if mine is not None:
            return entry_out(mine), False
        if await self.pool.fetchval(HOLDS_A_SEAT, course_id, resident_id):
            raise ALREADY_BOOKED.again()
        await self._gate_takes(course_id, resident_id, ASK_ONLY)
        place, new = await self._write_place(course_id, resident_id)
        await self._gate_takes(course_id, resident_id, place)
        mine = await self._mine(course_id, resident_id)
        if mine is None:  # promoted or gone between the gate and this read
            raise Unavailable("Your place changed while it was being saved; please look again.")
        return entry_out(mine), new

    async def _write_place(self, course_id: int, resident_id: str) -> tuple[int, bool]:
        """Commit the resident's place: its id, and False when a twin request of the same
        resident wrote it first (then that place is the one the gate is told of)."""
        async with self.pool.acquire() as conn, conn.transaction():
            # A share lock on the course: a cancellation (which clears the waitlist) waits.
            status = await conn.fetchval(COURSE_STATUS, course_id)
            if status is None:
                raise NotFound.of("course")
            if status != "published":
                raise COURSE_CANCELLED.again()
            place = await conn.fetchval(JOIN, course_id, resident_id)
            twins = None if place is not None else await conn.fetchval(
                PLACE_ID, course_id, resident_id)
        if place is not None:
            return place, True
        if twins is None:  # the twin's place ended before this read
            raise Unavailable("Your place changed while it was being saved; please look again.")
        return twins, False

    async def _gate_takes(self, course_id: int, resident_id: str, place: int) -> None:
        """Tell the gate of a committed place (ASK_ONLY: only ask); on any answer but WAITING
        the place is ended again and the answer raised. Holds no connection while the gate
        (or the course loader behind it) works."""
        decision = await self.seats.wait(course_id, resident_id, place)
        if decision.outcome is Outcome.WAITING:
            return
        if place != ASK_ONLY:
            await self.pool.execute(END_PLACE, place)
            # In case a reconcile copied the committed place into the gate meanwhile.
            await self.seats.gate.leave_waitlist(course_id, resident_id)
        raise (await self.seats.why_not(course_id, decision)).again()

    async def leave(self, course_id: int, resident_id: str) -> WaitlistEntryOut:
        left = await self.pool.fetchrow(LEAVE, course_id, resident_id) \
            if storable_id(course_id) else None
        if left is None:
            raise NotFound.of("waitlist place of yours")
        await self.seats.gate.leave_waitlist(course_id, resident_id)
        return WaitlistEntryOut(left["course_id"], left["resident_id"], left["status"], None,
                                left["joined_at"])


# --- /v1 --------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]  # request.user: the principal the middleware checked


@post("/v1/courses/{course_id:int}/waitlist", operation_id="joinWaitlist", tags=["waitlist"],
      status_code=201, **requires("resident", errors=(404, 409), also={
          200: ResponseSpec(WaitlistEntryOut, description="Your place, already taken before")}))
async def join_waitlist(request: Caller, course_id: CourseId,
                        waitlist: NamedDependency[Waitlist]) -> Response[WaitlistEntryOut]:
    """Wait for a sold-out course: 201 with your position (1 = next), 200 if you already wait,
    409 `seats_available` when a seat is free (grab it instead)."""
    entry, joined = await waitlist.join(course_id, request.user.sub)
    return Response(entry, status_code=201 if joined else 200)


@get("/v1/courses/{course_id:int}/waitlist/me", operation_id="myWaitlistPlace",
     tags=["waitlist"], **requires("resident", errors=(404,)))
async def my_waitlist_place(request: Caller, course_id: CourseId,
                            waitlist: NamedDependency[Waitlist]) -> WaitlistEntryOut:
    """Your current place in the waitlist of a course."""
    return await waitlist.place(course_id, request.user.sub)


@get("/v1/me/waitlist", operation_id="myWaitlist", tags=["waitlist"], **requires("resident"))
async def my_waitlist(request: Caller,
                      waitlist: NamedDependency[Waitlist]) -> list[WaitlistEntryOut]:
    """Every course you wait for, with your current position (1 = next), newest first."""
    return await waitlist.of_resident(request.user.sub)


@delete("/v1/courses/{course_id:int}/waitlist/me", operation_id="leaveWaitlist",
        tags=["waitlist"], status_code=200, **requires("resident", errors=(404,)))
async def leave_waitlist(request: Caller, course_id: CourseId,
                         waitlist: NamedDependency[Waitlist]) -> WaitlistEntryOut:
    """Leave the waitlist of a course."""
    return await waitlist.leave(course_id, request.user.sub)


@get("/v1/courses/{course_id:int}/waitlist", operation_id="courseWaitlist", tags=["waitlist"],
     **requires("venue", "operator", errors=(404,)))
async def course_waitlist(request: Caller, course_id: CourseId,
                          waitlist: NamedDependency[Waitlist]) -> list[CourseWaitingOut]:
    """Who waits for a course, first in line first, each phone masked (138****0001): its
    venue or an operator; the venue's roster page shows these."""
    return await waitlist.of_course(course_id, request.user)


HANDLERS: list[Any] = [join_waitlist, my_waitlist_place, my_waitlist, leave_waitlist,
                       course_waitlist]
