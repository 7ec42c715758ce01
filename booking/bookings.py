"""Bookings: the grab (gate, then ledger), cancelling, and the lists residents and venues see."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi import ResponseSpec

from booking.context import Services, services
from booking.courses import CourseId, check_owner, existing_id, fetch_course
from booking.errors import ApiError, answer, not_found, secured, unavailable
from booking.ledger import CommitFailed, NewBooking
from booking.observability import GRABS

log = logging.getLogger("booking.bookings")

# How long a repeated grab waits for its twin (still being written) to be committed.
TWIN_WAIT_S = 3.0


class BookingOut(msgspec.Struct):
    id: str
    course_id: int
    resident_id: str
    status: str
    created_at: datetime


COLUMNS = "id::text AS id, course_id, resident_id, status, created_at"
SELECT_BOOKING = f"SELECT {COLUMNS} FROM bookings WHERE id = $1"
SELECT_ACTIVE = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND resident_id = $2 AND status = 'confirmed'
"""
CANCEL_BOOKING = f"""
UPDATE bookings SET status = 'cancelled', cancelled_at = now()
WHERE id = $1 AND resident_id = $2 AND status = 'confirmed' RETURNING {COLUMNS}
"""
SELECT_OWN = f"SELECT {COLUMNS} FROM bookings WHERE id = $1 AND resident_id = $2"
MY_BOOKINGS = f"""
SELECT {COLUMNS} FROM bookings WHERE resident_id = $1 ORDER BY created_at DESC LIMIT 500
"""
ROSTER = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND status = 'confirmed' ORDER BY created_at
"""


def booking_out(row: asyncpg.Record) -> BookingOut:
    return BookingOut(**dict(row))


SOLD_OUT = ApiError(409, "sold_out", "Every seat of this course is taken.")
def rate_limited(wait_s: float) -> ApiError:
    return ApiError(429, "rate_limited", "Too many grabs; please wait a moment.",
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


COURSE_CANCELLED = ApiError(409, "course_cancelled", "This course is cancelled.")


def not_open(opens_at_ms: int) -> ApiError:
    opens_at = datetime.fromtimestamp(opens_at_ms / 1000, UTC)
    wait_s = max(1, math.ceil(opens_at_ms / 1000 - time.time()))
    return ApiError(409, "not_open", f"Sales open at {opens_at.isoformat()}.",
                    headers={"Retry-After": str(wait_s)},
                    extra={"opens_at": opens_at.isoformat()})


@post("/v1/courses/{course_id:int}/bookings", operation_id="grabSeat", tags=["bookings"],
      status_code=201, security=[{"bearer": []}], responses={
          **secured(404, 409, 429)["responses"],
          200: ResponseSpec(BookingOut, description="The booking this resident already holds"),
      })
async def grab_seat(request: Request, course_id: CourseId) -> Response[BookingOut]:
    """Grab a seat: 201 with a new booking, 200 with the one already held, or 409 saying why not."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    wait_s = await s.limiter.wait_s(resident_id, request.client.host if request.client else "-")
    if wait_s:
        GRABS.labels("rate_limited").inc()
        return answer(rate_limited(wait_s))  # type: ignore[return-value]
    booking_id = str(uuid.uuid4())
    decision = await s.gate.grab(existing_id(course_id), resident_id, booking_id)
    if decision.outcome == "missing":
        if await s.loader.load(course_id) is None:
            raise not_found("course")
        decision = await s.gate.grab(course_id, resident_id, booking_id)
    GRABS.labels(decision.outcome).inc()
    match decision.outcome:
        case "taken":
            return await _commit(s, course_id, resident_id, booking_id)
        case "held":
            return Response(await _held_booking(s, str(decision.value)), status_code=200)
        case "sold_out":
            return answer(SOLD_OUT)  # type: ignore[return-value]
        case "not_open":
            return answer(not_open(int(decision.value or 0)))  # type: ignore[return-value]
        case "course_cancelled":
            return answer(COURSE_CANCELLED)  # type: ignore[return-value]
    raise unavailable()


async def _commit(s: Services, course_id: int, resident_id: str,
                  booking_id: str) -> Response[BookingOut]:
    """Write the row the gate allowed; on failure give the seat back and say so."""
    created_at = datetime.now(UTC)
    try:
        await s.ledger.record(NewBooking(booking_id, course_id, resident_id, created_at))
    except CommitFailed as exc:
        log.warning("booking %s not committed: %s", booking_id, exc)
        GRABS.labels("not_committed").inc()
        if exc.certain:
            await _give_back(s, course_id, resident_id, booking_id)
        if exc.constraint is not None:  # the ledger disagrees with the gate: resync the course
            await s.loader.load(course_id)
            if exc.constraint == "courses_not_oversold":
                raise ApiError(409, SOLD_OUT.code, SOLD_OUT.detail) from exc
            row = await s.pool.fetchrow(SELECT_ACTIVE, course_id, resident_id)
            if row is not None:
                return Response(booking_out(row), status_code=200)
        raise unavailable("Your seat could not be saved; please try again.") from exc
    body = BookingOut(booking_id, course_id, resident_id, "confirmed", created_at)
    return Response(body, status_code=201)


async def _give_back(s: Services, course_id: int, resident_id: str, booking_id: str) -> None:
    try:
        await s.gate.release(course_id, resident_id, booking_id)
    except Exception as exc:  # the reconciler gives it back after the pending timeout
        log.warning("could not give back seat of %s: %s", booking_id, exc)


async def _held_booking(s: Services, booking_id: str) -> BookingOut:
    """The booking a repeated grab already holds; waits briefly if it is still being written."""
    deadline = time.monotonic() + TWIN_WAIT_S
    while True:
        row = await s.pool.fetchrow(SELECT_BOOKING, booking_id)
        if row is not None:
            return booking_out(row)
        if time.monotonic() > deadline:
            raise unavailable("Your earlier grab of this course is still being saved; "
                              "please try again.")
        await asyncio.sleep(0.02)


@delete("/v1/bookings/{booking_id:uuid}", operation_id="cancelBooking", tags=["bookings"],
        status_code=200, **secured(404))
async def cancel_booking(request: Request, booking_id: uuid.UUID) -> BookingOut:
    """Cancel your booking; the seat can be grabbed again at once."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    row = await s.pool.fetchrow(SELECT_OWN, booking_id, resident_id)
    if row is None:
        raise not_found("booking of yours")
    if row["status"] != "confirmed":
        # Cancelled before: give the seat back again in case that cancel's release never ran.
        await s.gate.release(row["course_id"], resident_id, row["id"])
        return booking_out(row)
    await s.gate.mark_leaving(row["course_id"], resident_id, row["id"])
    cancelled = await s.pool.fetchrow(CANCEL_BOOKING, booking_id, resident_id)
    if cancelled is None:  # a twin request cancelled it a moment ago
        return booking_out(await s.pool.fetchrow(SELECT_OWN, booking_id, resident_id))
    if not await s.gate.release(row["course_id"], resident_id, row["id"]):
        await s.loader.load(row["course_id"])
    return booking_out(cancelled)


@get("/v1/me/bookings", operation_id="myBookings", tags=["bookings"], **secured())
async def my_bookings(request: Request) -> list[BookingOut]:
    """Your bookings, newest first, cancelled ones included."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    return [booking_out(row) for row in await s.pool.fetch(MY_BOOKINGS, resident_id)]


@get("/v1/courses/{course_id:int}/bookings", operation_id="courseRoster", tags=["bookings"],
     **secured(404))
async def course_roster(request: Request,
                        course_id: CourseId) -> list[BookingOut]:
    """The active bookings of a course (its venue or an operator)."""
    s = services(request)
    who = s.auth.require(request, "venue", "operator")
    course = await fetch_course(s, course_id)
    check_owner(who, course["venue_id"])
    return [booking_out(row) for row in await s.pool.fetch(ROSTER, course_id)]


HANDLERS = [grab_seat, cancel_booking, my_bookings, course_roster]
