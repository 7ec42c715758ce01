"""Check-in at the door and the attendance it records.

A venue's desk checks a resident in by the booking's QR token (it names the booking and carries
a MAC, see `booking.checkin`) or by its 8-character code (which names no booking: it is compared
with the codes of the venue's confirmed bookings whose lesson is at hand). A check-in is good at
the booking's own venue, for a confirmed booking, from 60 minutes before a lesson until its end;
a course meets `lessons` times, weekly from `starts_at`, each lesson as long as the first.

Attendance is one row per (booking, lesson date), the date in Beijing time; the unique
constraint makes a second or simultaneous check-in of the same lesson add nothing, and both
answer with the first one. Postgres's `now()` is the one clock.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from booking.checkin import booking_of_token, code_matches
from booking.core.auth import Principal, requires
from booking.core.errors import Conflict, Forbidden, Invalid
from booking.core.fields import NO_NUL

Method = Literal["qr", "code"]
EARLY = "interval '60 minutes'"  # a lesson's check-in opens this long before it starts


class CheckinIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `token` (what the QR holds) and `code` (the 8 characters typed)."""

    token: Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)] | None = None
    code: Annotated[str, msgspec.Meta(max_length=40, pattern=NO_NUL)] | None = None


class AttendanceOut(msgspec.Struct):
    booking_id: str
    course_id: int
    course_title: str
    resident_id: str
    lesson_date: dt.date  # the lesson's date in Beijing time
    lesson_starts_at: dt.datetime
    lesson_ends_at: dt.datetime
    checked_at: dt.datetime  # the first check-in of this booking for this lesson
    method: Method
    first: bool  # False: this booking was already checked in for this lesson


# The lesson of course `c` at hand or next: the first whose end is not yet past (n from 0).
LESSON = """
CROSS JOIN LATERAL (
    SELECT c.starts_at + make_interval(weeks => k.n) AS starts_at,
           c.ends_at + make_interval(weeks => k.n) AS ends_at, k.n
    FROM (SELECT greatest(0, ceil(extract(epoch FROM now() - c.ends_at) / 604800))::int AS n) k
) l
"""
AT_HAND = f"(l.n < c.lessons AND now() >= l.starts_at - {EARLY})"
CANDIDATE = f"""
SELECT b.id::text AS booking_id, b.status, b.resident_id, c.id AS course_id,
       c.title AS course_title, c.venue_id, l.starts_at AS lesson_starts_at,
       l.ends_at AS lesson_ends_at,
       ((l.starts_at AT TIME ZONE 'UTC') + interval '8 hours')::date AS lesson_date,
       {AT_HAND} AS at_hand
FROM bookings b JOIN courses c ON c.id = b.course_id {LESSON}
"""
BOOKING = CANDIDATE + "WHERE b.id = $1"
# The venue's confirmed bookings with a lesson at hand: where a typed code is looked for.
AT_HAND_NOW = CANDIDATE + f"""
WHERE c.venue_id = $1 AND b.status = 'confirmed' AND c.starts_at <= now() + {EARLY}
  AND {AT_HAND}
"""
RECORD = """
INSERT INTO attendance (booking_id, lesson_date, method, verifier) VALUES ($1, $2, $3, $4)
ON CONFLICT (booking_id, lesson_date) DO NOTHING RETURNING checked_at, method
"""
FIRST = "SELECT checked_at, method FROM attendance WHERE booking_id = $1 AND lesson_date = $2"
ONE = """
SELECT a.booking_id::text AS booking_id, c.id AS course_id, c.title AS course_title,
       b.resident_id, a.lesson_date, a.checked_at, a.method,
       c.starts_at + make_interval(weeks => (a.lesson_date - (
           (c.starts_at AT TIME ZONE 'UTC') + interval '8 hours')::date) / 7) AS lesson_starts_at,
       c.ends_at + make_interval(weeks => (a.lesson_date - (
           (c.starts_at AT TIME ZONE 'UTC') + interval '8 hours')::date) / 7) AS lesson_ends_at
FROM attendance a JOIN bookings b ON b.id = a.booking_id JOIN courses c ON c.id = b.course_id
WHERE a.booking_id = $1 AND a.lesson_date = $2 AND c.venue_id = $3
"""

INVALID_TOKEN = Invalid("This is not a check-in code of a booking here.", code="invalid_token")
WRONG_VENUE = Forbidden("This booking is for another venue.", code="wrong_venue")
NO_LESSON_NOW = Conflict("This course has no lesson now (check-in opens 60 minutes before a "
                         "lesson and closes at its end).", code="no_lesson_now")
NOT_ACTIVE = Conflict("Only a confirmed booking checks in; this one is not.",
                      code="booking_not_active")
# The refusals a check-in gives, by code (the desk's page says each in words).
REFUSALS = ("invalid_token", "wrong_venue", "no_lesson_now", "booking_not_active")


def _attendance(row: asyncpg.Record, checked_at: dt.datetime, method: Method,
                first: bool) -> AttendanceOut:
    return AttendanceOut(row["booking_id"], row["course_id"], row["course_title"],
                         row["resident_id"], row["lesson_date"], row["lesson_starts_at"],
                         row["lesson_ends_at"], checked_at, method, first)


class Attendance:
    """The attendance domain's service: check-ins from the `/v1` handler and the desk's page."""

    def __init__(self, pool: asyncpg.Pool, secret: str) -> None:
        self.pool = pool
        self.secret = secret

    async def check_in(self, venue_id: int, verifier: str, *, token: str | None = None,
                       code: str | None = None) -> AttendanceOut:
        """Check a booking in for its lesson at hand, by QR token or typed code (exactly one).
        Answers the attendance (`first` False when it was there already) or raises one of
        REFUSALS."""
        if (token is None) == (code is None):
            raise Invalid("Send exactly one of token and code.")
        if token is not None:
            row = await self._by_token(venue_id, token)
        else:
            row = await self._by_code(venue_id, code or "")
        if row["status"] != "confirmed":
            raise NOT_ACTIVE.again()
        if not row["at_hand"]:
            raise NO_LESSON_NOW.again()
        method: Method = "qr" if token is not None else "code"
        booking_id = uuid.UUID(row["booking_id"])
        recorded = await self.pool.fetchrow(RECORD, booking_id, row["lesson_date"], method,
                                            verifier)
        if recorded is not None:
            return _attendance(row, recorded["checked_at"], method, True)
        # The row is there (committed: a conflicting insert waits for its twin to finish).
        earlier = await self.pool.fetchrow(FIRST, booking_id, row["lesson_date"])
        return _attendance(row, earlier["checked_at"], earlier["method"], False)

    async def _by_token(self, venue_id: int, token: str) -> asyncpg.Record:
        booking_id = booking_of_token(self.secret, token.strip())
        row = await self.pool.fetchrow(BOOKING, uuid.UUID(booking_id)) if booking_id else None
        if row is None:  # forged, or a well-made token of no booking we have
            raise INVALID_TOKEN.again()
        if row["venue_id"] != venue_id:
            raise WRONG_VENUE.again()
        return row

    async def _by_code(self, venue_id: int, typed: str) -> asyncpg.Record:
        """The venue's confirmed booking with a lesson at hand whose code this is. A code names
        no booking by itself, so each candidate's code is made and compared."""
        for row in await self.pool.fetch(AT_HAND_NOW, venue_id):
            if code_matches(self.secret, row["booking_id"], typed):
                return row
        raise INVALID_TOKEN.again()

    async def one(self, venue_id: int, booking_id: uuid.UUID,
                  lesson_date: dt.date) -> AttendanceOut | None:
        """A check-in at this venue (for the desk's result view), or None."""
        row = await self.pool.fetchrow(ONE, booking_id, lesson_date, venue_id)
        if row is None:
            return None
        return _attendance(row, row["checked_at"], row["method"], False)


# --- /v1 --------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]


@post("/v1/checkins", operation_id="checkIn", tags=["attendance"], status_code=201,
      **requires("venue", errors=(409,), also={
          200: ResponseSpec(AttendanceOut, description="Already checked in for this lesson: "
                                                       "the first check-in, nothing added")}))
async def check_in(request: Caller, data: JSONBody[CheckinIn],
                   attendance: NamedDependency[Attendance]) -> Response[AttendanceOut]:
    """Check a resident in at the door by the token of their booking's QR code or its typed
    8-character code: 201 with the attendance, 200 with the first one when already checked in
    for this lesson; 400 `invalid_token`, 403 `wrong_venue`, 409 `no_lesson_now` or
    `booking_not_active`."""
    venue_id = request.user.venue_id
    if venue_id is None:  # the authentication middleware refuses a venue token without one
        raise Forbidden("A venue token needs a venue_id claim.")
    found = await attendance.check_in(venue_id, request.user.sub, token=data.token,
                                      code=data.code)
    return Response(found, status_code=201 if found.first else 200)


HANDLERS: list[Any] = [check_in]
