"""A course's page with its one big button, and the page that says how the grab went.

The button posts a plain form (`form#grab`, or `form#waitlist` when sold out); the handlers call
the same services as `POST /v1/courses/{id}/bookings` (limit, then grab) and
`POST /v1/courses/{id}/waitlist`, then answer 303 to the result page. Only a refusal's code
travels in that address; the result page reads the facts (booking status, hold expiry,
waitlist position, seats, opening time) fresh from the services, so a reload tells the truth
of that moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from booking.bookings import BookingOut, Bookings, is_active
from booking.core.errors import ApiError, NotFound
from booking.core.settings import Settings
from booking.courses import CourseOut, Courses
from booking.releases.service import Releases
from booking.waitlist import Waitlist, WaitlistEntryOut
from booking.web.i18n import Words
from booking.web.release_page import draw_pending, release_of, release_path
from booking.web.render import page, see_other, sign_in_first, visitor

# Refusal codes a grab or a join may send to the result page (anything else is ignored).
REFUSALS = ("sold_out", "not_open", "course_cancelled", "rate_limited", "unavailable",
            "seats_available", "already_booked")


def time_left(words: Words, seconds: float) -> str:
    """`1 天 2 时 3 分 4 秒`, from the first unit that is not zero: what the countdown shows."""
    _ = words.gettext
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    values = {"d": days, "h": hours, "m": minutes, "s": secs}
    if days:
        return _("%(d)s 天 %(h)s 时 %(m)s 分 %(s)s 秒") % values
    if hours:
        return _("%(h)s 时 %(m)s 分 %(s)s 秒") % values
    if minutes:
        return _("%(m)s 分 %(s)s 秒") % values
    return _("%(s)s 秒") % values


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def course_path(course_id: int) -> str:
    return f"/courses/{course_id}"


def result_path(course_id: int, code: str | None = None) -> str:
    query = f"?{urlencode({'code': code})}" if code else ""
    return f"/courses/{course_id}/result{query}"


def client_address(request: Request) -> str:
    """The address the per-address grab limit counts (the same as the `/v1` grab's)."""
    return request.client.host if request.client else "-"


@dataclass(frozen=True, slots=True)
class Countdown:
    """The time left until a course's sales open, on the server's clock."""

    opens_at_ms: int
    server_now_ms: int
    text: str


def countdown(words: Words, course: CourseOut) -> Countdown | None:
    """The countdown to a course's opening, or None once its sales are open."""
    now_ms = int(time.time() * 1000)
    opens_ms = epoch_ms(course.sales_open_at)
    if course.status != "published" or opens_ms <= now_ms:
        return None
    return Countdown(opens_ms, now_ms, time_left(words, (opens_ms - now_ms) / 1000))


# --- the course page --------------------------------------------------------------------------

@get("/courses/{course_id:int}", name="course")
async def course_page(request: Request, course_id: FromPath[int],
                      courses: NamedDependency[Courses],
                      releases: NamedDependency[Releases]) -> Template:
    """A course's facts, live seats, the countdown to its opening and the one big button;
    `GET /v1/courses/{id}` gives the same facts. A course of a release links to it; while its
    release's draw is pending, the button leads there instead of grabbing (no countdown: the
    course's opening is a placeholder until the draw)."""
    course = await courses.one(course_id)
    release = await release_of(course, releases)
    words = visitor(request).words
    return page(request, "course.html", course=course, release=release,
                countdown=None if draw_pending(release) else countdown(words, course))


@post("/courses/{course_id:int}/grab", name="grab", status_code=303)
async def grab_from_page(request: Request, course_id: FromPath[int],
                         bookings: NamedDependency[Bookings]) -> Redirect:
    """The big button: the `/v1` grab's limit and seat gate, then 303 to the result page."""
    who = visitor(request)
    resident_id = who.resident_id
    if resident_id is None:
        return sign_in_first(request, course_path(course_id))
    limited = await bookings.limit(resident_id, client_address(request))
    if limited is not None:
        return see_other(result_path(course_id, limited.code), request)
    result = await bookings.grab(course_id, resident_id, who.user.tier if who.user else None)
    if isinstance(result, ApiError):
        return _refused(request, course_id, result)
    return see_other(result_path(course_id), request)


@post("/courses/{course_id:int}/waitlist", name="join_waitlist", status_code=303)
async def join_from_page(request: Request, course_id: FromPath[int],
                         waitlist: NamedDependency[Waitlist]) -> Redirect:
    """加入候补: the `/v1` waitlist join, then 303 to the result page (with the position)."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, course_path(course_id))
    try:
        await waitlist.join(course_id, resident_id)
    except ApiError as exc:
        return _refused(request, course_id, exc)
    return see_other(result_path(course_id), request)


def _refused(request: Request, course_id: int, error: ApiError) -> Redirect:
    """A refusal goes to the result page by its code; no such course is a 404 page; a course
    whose release has not been drawn yet sends the resident to the release's wish form."""
    if isinstance(error, NotFound):
        raise error.again()
    if error.code == "draw_pending" and isinstance(error.extra.get("release_id"), int):
        return see_other(release_path(error.extra["release_id"]), request)
    code = error.code if error.code in REFUSALS else "unavailable"
    return see_other(result_path(course_id, code), request)


# --- the result page --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    """What the result page says: `kind` is its `data-result`; the rest are its facts."""

    kind: str  # confirmed, held, waitlist, sold_out, not_open, cancelled, rate_limited,
    #            unavailable, seats_available, expired, none
    booking: BookingOut | None = None
    place: WaitlistEntryOut | None = None


def active_booking(mine: list[BookingOut], course_id: int) -> BookingOut | None:
    return next((b for b in mine if b.course_id == course_id and is_active(b.status)), None)


async def outcome(course: CourseOut, code: str | None, resident_id: str,
                  bookings: Bookings, waitlist: Waitlist) -> Outcome:
    """The resident's standing in a course now; `code` (the grab's refusal) only decides
    what the facts cannot tell (a rate limit, a store that failed)."""
    mine = [b for b in await bookings.of_resident(resident_id) if b.course_id == course.id]
    booking = active_booking(mine, course.id)
    if booking is not None:
        return Outcome(booking.status, booking=booking)
    try:
        return Outcome("waitlist", place=await waitlist.place(course.id, resident_id))
    except NotFound:
        pass
    if course.status == "cancelled":
        return Outcome("cancelled")
    if code in ("rate_limited", "unavailable"):
        return Outcome(code)
    if mine and mine[0].status == "expired" and not code:
        return Outcome("expired", booking=mine[0])
    if course.sales_open_at > datetime.now(UTC):
        return Outcome("not_open")
    if course.seats_left <= 0:
        return Outcome("sold_out")
    return Outcome("seats_available" if code else "none")


@get("/courses/{course_id:int}/result", name="grab_result")
async def result_page(request: Request, course_id: FromPath[int],
                      courses: NamedDependency[Courses],
                      bookings: NamedDependency[Bookings], waitlist: NamedDependency[Waitlist],
                      settings: NamedDependency[Settings], releases: NamedDependency[Releases],
                      code: FromQuery[str | None] = None
                      ) -> Template | Redirect:
    """How the grab (or the join) went, in words: 已抢到, 请在 N 分钟内付款, 候补第 N 位, 已满,
    尚未开抢 ... The same facts as `GET /v1/me/bookings` and `GET /v1/me/waitlist`."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, course_path(course_id))
    course = await courses.one(course_id)
    found = await outcome(course, code if code in REFUSALS else None, resident_id, bookings,
                          waitlist)
    words = visitor(request).words
    release = await release_of(course, releases)
    return page(request, "result.html", course=course, outcome=found, demo=settings.demo,
                release=release, here_path=result_path(course_id),
                countdown=None if draw_pending(release) else countdown(words, course))


HANDLERS: list[Any] = [course_page, grab_from_page, join_from_page, result_page]
