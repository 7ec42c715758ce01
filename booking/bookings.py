"""Bookings: the grab (gate, then ledger), cancelling, and the lists residents and venues see."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi import ResponseSpec

from booking.context import Services, services
from booking.core.errors import ApiError, answer, not_found, secured, unavailable
from booking.core.fields import MAX_ID
from booking.core.observability import GRABS
from booking.courses import CourseId, check_owner, existing_id, fetch_course
from booking.ledger.commit import CommitFailed, NewBooking
from booking.ledger.promotions import free_seat

log = logging.getLogger("booking.bookings")

# How long a repeated grab waits for its twin (still being written) to be committed.
TWIN_WAIT_S = 3.0


class BookingOut(msgspec.Struct):
    id: str
    course_id: int
    resident_id: str
    status: str  # confirmed, held (a paid course until its payment arrives), cancelled, expired
    created_at: datetime
    expires_at: datetime | None = None  # when a hold lapses unless paid


class SwapIn(msgspec.Struct, forbid_unknown_fields=True):
    course_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]


COLUMNS = "id::text AS id, course_id, resident_id, status, created_at, expires_at"
ACTIVE = "status IN ('confirmed', 'held')"
SELECT_BOOKING = f"SELECT {COLUMNS} FROM bookings WHERE id = $1"
SELECT_ACTIVE = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND resident_id = $2 AND {ACTIVE}
"""
CANCEL_BOOKING = f"""
UPDATE bookings SET status = 'cancelled', cancelled_at = now()
WHERE id = $1 AND resident_id = $2 AND {ACTIVE} RETURNING {COLUMNS}
"""
SELECT_OWN = f"SELECT {COLUMNS} FROM bookings WHERE id = $1 AND resident_id = $2"
SELECT_OWN_FOR_CANCEL = """
SELECT b.id::text AS id, b.course_id, b.resident_id, b.status, b.created_at, b.expires_at,
       now() > coalesce(c.cancel_deadline, c.starts_at) AS too_late
FROM bookings b JOIN courses c ON c.id = b.course_id WHERE b.id = $1 AND b.resident_id = $2
"""
INSERT_SWAPPED = f"""
INSERT INTO bookings (id, course_id, resident_id, status, expires_at)
SELECT $1, c.id, $3, CASE WHEN c.price_cents > 0 THEN 'held' ELSE 'confirmed' END,
       CASE WHEN c.price_cents > 0 THEN now() + make_interval(mins => c.hold_minutes) END
FROM courses c WHERE c.id = $2 AND c.status = 'published'
RETURNING {COLUMNS}
"""
MY_BOOKINGS = f"""
SELECT {COLUMNS} FROM bookings WHERE resident_id = $1 ORDER BY created_at DESC LIMIT 500
"""
ROSTER = f"""
SELECT {COLUMNS} FROM bookings WHERE course_id = $1 AND {ACTIVE} ORDER BY created_at
"""


def booking_out(row: asyncpg.Record) -> BookingOut:
    return BookingOut(row["id"], row["course_id"], row["resident_id"], row["status"],
                      row["created_at"], row["expires_at"])


SOLD_OUT = ApiError(409, "sold_out", "Every seat of this course is taken.")
DEADLINE_PASSED = ApiError(409, "cancel_deadline_passed",
                           "The cancellation deadline of this course has passed.")
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
    wait_s = await _wait_before_grabbing(s, request, resident_id)
    if wait_s:
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
            return await _commit(s, course_id, resident_id, booking_id, decision.hold_s)
        case "held":
            return Response(await _held_booking(s, str(decision.value)), status_code=200)
        case "sold_out":
            return answer(SOLD_OUT)  # type: ignore[return-value]
        case "not_open":
            return answer(not_open(int(decision.value or 0)))  # type: ignore[return-value]
        case "course_cancelled":
            return answer(COURSE_CANCELLED)  # type: ignore[return-value]
    raise unavailable()


async def _wait_before_grabbing(s: Services, request: Request, resident_id: str) -> float:
    """Seconds this resident (or their address) must wait under the grab limits; 0: go."""
    wait_s = await s.limiter.wait_s(resident_id, request.client.host if request.client else "-")
    if wait_s:
        GRABS.labels("rate_limited").inc()
    return wait_s


async def _commit(s: Services, course_id: int, resident_id: str, booking_id: str,
                  hold_s: int) -> Response[BookingOut]:
    """Write the row the gate allowed (a hold on a paid course); on failure give the seat back
    and say so."""
    created_at = datetime.now(UTC)
    expires_at = created_at + timedelta(seconds=hold_s) if hold_s else None
    new = NewBooking(booking_id, course_id, resident_id, created_at, expires_at)
    try:
        await s.ledger.record(new)
    except CommitFailed as exc:
        log.warning("booking %s not committed: %s", booking_id, exc)
        GRABS.labels("not_committed").inc()
        if exc.certain:
            await _give_back(s, course_id, resident_id, booking_id)
        if exc.constraint is not None:  # the ledger disagrees with the gate: resync the course
            await s.loader.load(course_id)
            if exc.constraint == "courses_not_oversold":
                raise SOLD_OUT.again() from exc
            if exc.constraint == "courses_cancelled_take_no_bookings":
                raise COURSE_CANCELLED.again() from exc
            row = await s.pool.fetchrow(SELECT_ACTIVE, course_id, resident_id)
            if row is not None:
                return Response(booking_out(row), status_code=200)
        raise unavailable("Your seat could not be saved; please try again.") from exc
    body = BookingOut(booking_id, course_id, resident_id, new.status, created_at, expires_at)
    return Response(body, status_code=201)


async def _give_back(s: Services, course_id: int, resident_id: str, booking_id: str) -> None:
    try:
        await free_seat(s.pool, s.gate, course_id, resident_id, booking_id)
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


async def _own_booking(s: Services, booking_id: uuid.UUID, resident_id: str) -> asyncpg.Record:
    """The resident's booking with its status and whether its cancel deadline has passed."""
    row = await s.pool.fetchrow(SELECT_OWN_FOR_CANCEL, booking_id, resident_id)
    if row is None:
        raise not_found("booking of yours")
    return row


@delete("/v1/bookings/{booking_id:uuid}", operation_id="cancelBooking", tags=["bookings"],
        status_code=200, **secured(404, 409))
async def cancel_booking(request: Request, booking_id: uuid.UUID) -> BookingOut:
    """Cancel your booking or hold (until the course's cancel deadline); the seat goes to the
    first resident waiting, or can be grabbed again at once."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    row = await _own_booking(s, booking_id, resident_id)
    if row["status"] not in ("confirmed", "held"):
        # Cancelled before: give the seat back again in case that cancel's release never ran.
        await free_seat(s.pool, s.gate, row["course_id"], resident_id, row["id"])
        return booking_out(row)
    if row["too_late"]:
        raise DEADLINE_PASSED.again()
    await s.gate.mark_leaving(row["course_id"], resident_id, row["id"])
    cancelled = await s.pool.fetchrow(CANCEL_BOOKING, booking_id, resident_id)
    if cancelled is None:  # a twin request (or the hold's expiry) ended it a moment ago
        return booking_out(await s.pool.fetchrow(SELECT_OWN, booking_id, resident_id))
    if not await free_seat(s.pool, s.gate, row["course_id"], resident_id, row["id"]):
        await s.loader.load(row["course_id"])
    return booking_out(cancelled)


@post("/v1/bookings/{booking_id:uuid}/swap", operation_id="swapBooking", tags=["bookings"],
      status_code=201, **secured(404, 409, 413, 429))
async def swap_booking(request: Request, booking_id: uuid.UUID, data: SwapIn) -> BookingOut:
    """Trade your booking for a seat in another course in one step: 201 with the new booking
    (the old one cancelled, its seat to the waitlist), or 409 and you keep the old one."""
    s = services(request)
    resident_id = s.auth.require(request, "resident").sub
    wait_s = await _wait_before_grabbing(s, request, resident_id)
    if wait_s:  # a swap takes a seat too: the same limits as a grab
        raise rate_limited(wait_s)
    old = await _own_booking(s, booking_id, resident_id)
    if old["status"] not in ("confirmed", "held"):
        raise ApiError(409, "not_active", "This booking is no longer active.")
    if old["too_late"]:
        raise DEADLINE_PASSED.again()
    if data.course_id == old["course_id"]:
        raise ApiError(409, "same_course", "That is the course you already hold.")
    new_id = await _take_target(s, data.course_id, resident_id)
    return await _write_swap(s, old, new_id, data.course_id, resident_id)


async def _take_target(s: Services, course_id: int, resident_id: str) -> str:
    """A seat in the swap's target course, pending until the swap is written; else 409."""
    new_id = str(uuid.uuid4())
    decision = await s.gate.grab(course_id, resident_id, new_id)
    if decision.outcome == "missing":
        if await s.loader.load(course_id) is None:
            raise not_found("course")
        decision = await s.gate.grab(course_id, resident_id, new_id)
    match decision.outcome:
        case "taken":
            return new_id
        case "held":
            raise ApiError(409, "already_booked", "You already hold a seat in that course.")
        case "sold_out":
            raise SOLD_OUT.again()
        case "not_open":
            raise not_open(int(decision.value or 0))
        case "course_cancelled":
            raise COURSE_CANCELLED.again()
    raise unavailable()


async def _write_swap(s: Services, old: asyncpg.Record, new_id: str, course_id: int,
                      resident_id: str) -> BookingOut:
    """One transaction: the new booking in, the old one cancelled. Only then the old seat is
    freed; any failure gives the new seat back and leaves the old booking as it was."""
    await s.gate.mark_leaving(old["course_id"], resident_id, old["id"])
    try:
        async with s.pool.acquire() as conn, conn.transaction():
            cancelled = await conn.fetchrow(CANCEL_BOOKING, uuid.UUID(old["id"]), resident_id)
            if cancelled is None:
                raise ApiError(409, "not_active", "This booking is no longer active.")
            row = await conn.fetchrow(INSERT_SWAPPED, new_id, course_id, resident_id)
            if row is None:
                raise COURSE_CANCELLED.again()
    except (ApiError, asyncpg.PostgresError) as exc:
        await _give_back(s, course_id, resident_id, new_id)
        await s.gate.settle([(old["course_id"], resident_id)])  # the old seat stays theirs
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):  # gate and ledger differ
            await s.loader.load(course_id)
            if getattr(exc, "constraint_name", None) == "courses_cancelled_take_no_bookings":
                raise COURSE_CANCELLED.again() from exc
            if isinstance(exc, asyncpg.UniqueViolationError):
                raise ApiError(409, "already_booked",
                               "You already hold a seat in that course.") from exc
            raise SOLD_OUT.again() from exc
        raise
    await s.gate.settle([(course_id, resident_id)])
    await free_seat(s.pool, s.gate, old["course_id"], resident_id, old["id"])
    return booking_out(row)


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


HANDLERS = [grab_seat, cancel_booking, swap_booking, my_bookings, course_roster]
