"""The waitlist of a sold-out course: join, see your place, leave.

A place is a Postgres row (its id is the order of arrival) and an entry in the gate's copy of
the queue. Joining writes the row, asks the gate (wait.lua: is the course still full?), and
commits only when the gate said yes, so nobody waits for a course with a free seat. Freed seats
reach the queue through booking/promotions.py.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi import ResponseSpec

from booking.context import Services, services
from booking.core.errors import ApiError, not_found, secured, unavailable
from booking.courses import CourseId, existing_id


class WaitlistEntryOut(msgspec.Struct):
    course_id: int
    resident_id: str
    status: str  # waiting, or left after DELETE
    position: int | None  # 1 = next to get a freed seat; None once left
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
HOLDS_A_SEAT = """
SELECT 1 FROM bookings WHERE course_id = $1 AND resident_id = $2
  AND status IN ('confirmed', 'held')
"""

ALREADY_BOOKED = ApiError(409, "already_booked", "You already hold a seat in this course.")


def entry_out(row: asyncpg.Record) -> WaitlistEntryOut:
    waiting = row["status"] == "waiting"
    return WaitlistEntryOut(row["course_id"], row["resident_id"], row["status"],
                            int(row["position"]) if waiting else None, row["joined_at"])


@post("/v1/courses/{course_id:int}/waitlist", operation_id="joinWaitlist", tags=["waitlist"],
      status_code=201, security=[{"bearer": []}], responses={
          **secured(404, 409)["responses"],
          200: ResponseSpec(WaitlistEntryOut, description="Your place, already taken before"),
      })
async def join_waitlist(request: Request, course_id: CourseId) -> Response[WaitlistEntryOut]:
    """Wait for a sold-out course: 201 with your position (1 = next), 200 if you already wait,
    409 `seats_available` when a seat is free (grab it instead)."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    mine = await s.pool.fetchrow(MY_PLACE, existing_id(course_id), resident_id)
    if mine is not None:
        return Response(entry_out(mine), status_code=200)
    if await s.pool.fetchval(HOLDS_A_SEAT, course_id, resident_id):
        raise ALREADY_BOOKED.again()
    joined = await _join(s, course_id, resident_id)
    mine = await s.pool.fetchrow(MY_PLACE, course_id, resident_id)
    if mine is None:  # promoted or gone between the commit and this read
        raise unavailable("Your place changed while it was being saved; please look again.")
    return Response(entry_out(mine), status_code=201 if joined else 200)


async def _join(s: Services, course_id: int, resident_id: str) -> bool:
    """Write the place and put it in the gate's queue in one go; False when a twin request of
    the same resident wrote it first."""
    async with s.pool.acquire() as conn, conn.transaction():
        # A share lock on the course: a cancellation (which clears the waitlist) waits for us.
        status = await conn.fetchval(COURSE_STATUS, course_id)
        if status is None:
            raise not_found("course")
        if status != "published":
            raise ApiError(409, "course_cancelled", "This course is cancelled.")
        place = await conn.fetchval(JOIN, course_id, resident_id)
        if place is None:
            return False
        decision = await s.gate.wait(course_id, resident_id, place)
        if decision.outcome == "missing":
            await s.loader.load(course_id)
            decision = await s.gate.wait(course_id, resident_id, place)
        match decision.outcome:
            case "waiting":
                return True
            case "seats_available":
                raise ApiError(409, "seats_available",
                               "This course has a free seat: grab it instead of waiting.")
            case "held":
                raise ALREADY_BOOKED.again()
            case "course_cancelled":
                raise ApiError(409, "course_cancelled", "This course is cancelled.")
    raise unavailable()


@get("/v1/courses/{course_id:int}/waitlist/me", operation_id="myWaitlistPlace",
     tags=["waitlist"], **secured(404))
async def my_place(request: Request, course_id: CourseId) -> WaitlistEntryOut:
    """Your current place in the waitlist of a course."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    mine = await s.pool.fetchrow(MY_PLACE, existing_id(course_id), resident_id)
    if mine is None:
        raise not_found("waitlist place of yours")
    return entry_out(mine)


@delete("/v1/courses/{course_id:int}/waitlist/me", operation_id="leaveWaitlist",
        tags=["waitlist"], status_code=200, **secured(404))
async def leave_waitlist(request: Request, course_id: CourseId) -> WaitlistEntryOut:
    """Leave the waitlist of a course."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    left = await s.pool.fetchrow(LEAVE, existing_id(course_id), resident_id)
    if left is None:
        raise not_found("waitlist place of yours")
    await s.gate.leave_waitlist(course_id, resident_id)
    return WaitlistEntryOut(left["course_id"], left["resident_id"], left["status"], None,
                            left["joined_at"])


HANDLERS = [join_waitlist, my_place, leave_waitlist]
