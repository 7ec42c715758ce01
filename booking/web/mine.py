"""My bookings: each with its status in words, the check-in QR and code of an active one, the
waitlist places with their positions; cancel on a confirm page of its own; a demo payment.

Every action here has its `/v1` twin and calls the same service: cancel is
`DELETE /v1/bookings/{id}`, leaving a waitlist `DELETE /v1/courses/{id}/waitlist/me`, and the
demo payment is the signed `POST /v1/payments/callback` a provider would send.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from booking.bookings import BookingOut, Bookings, is_active
from booking.checkin import checkin_code, checkin_token, qr_svg
from booking.core.errors import Conflict, NotFound
from booking.core.settings import Settings
from booking.core.signing import sign
from booking.courses import CourseOut, Courses
from booking.payments import Payments
from booking.waitlist import Waitlist, WaitlistEntryOut
from booking.web.render import local_path, page, see_other, sign_in_first, visitor

MINE = "/me/bookings"


@dataclass(frozen=True, slots=True)
class Shown:
    """One booking as the page shows it: with its course, and the check-in of a confirmed one."""

    booking: BookingOut
    course: CourseOut
    token: str | None = None
    code: str | None = None
    qr: str | None = None

    @property
    def can_cancel(self) -> bool:
        deadline = self.course.cancel_deadline or self.course.starts_at
        return is_active(self.booking.status) and datetime.now(UTC) < deadline


@dataclass(frozen=True, slots=True)
class Waiting:
    place: WaitlistEntryOut
    course: CourseOut


async def _courses_of(courses: Courses, course_ids: list[int]) -> dict[int, CourseOut]:
    """The courses named, each read once (through the courses' one-second cache)."""
    found: dict[int, CourseOut] = {}
    for course_id in dict.fromkeys(course_ids):
        found[course_id] = await courses.one(course_id)
    return found


def _shown(booking: BookingOut, course: CourseOut, secret: str, qr_label: str) -> Shown:
    if booking.status != "confirmed":
        return Shown(booking, course)
    token = checkin_token(secret, booking.id)
    return Shown(booking, course, token, checkin_code(secret, booking.id),
                 qr_svg(token, qr_label))


async def _own(bookings: Bookings, booking_id: uuid.UUID, resident_id: str) -> BookingOut:
    """The resident's booking with that id, or a 404 page."""
    wanted = str(booking_id)
    for booking in await bookings.of_resident(resident_id):
        if booking.id == wanted:
            return booking
    raise NotFound.of("booking of yours")


@get(MINE, name="my_bookings")
async def my_bookings(request: Request, bookings: NamedDependency[Bookings],
                      waitlist: NamedDependency[Waitlist], courses: NamedDependency[Courses],
                      settings: NamedDependency[Settings],
                      done: FromQuery[str | None] = None
                      ) -> Template | Redirect:
    """Bookings (active first, then past ones) and waitlist places; the same as
    `GET /v1/me/bookings` and `GET /v1/me/waitlist`."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, MINE)
    _ = visitor(request).words.gettext
    mine = await bookings.of_resident(resident_id)
    places = await waitlist.of_resident(resident_id)
    known = await _courses_of(courses, [b.course_id for b in mine]
                              + [p.course_id for p in places])
    shown = [_shown(b, known[b.course_id], settings.secret, _("签到二维码")) for b in mine]
    return page(request, "mine.html",
                active=[s for s in shown if is_active(s.booking.status)],
                past=[s for s in shown if not is_active(s.booking.status)],
                waiting=[Waiting(p, known[p.course_id]) for p in places],
                demo=settings.demo, done=done if done in ("cancelled", "left", "paid") else None)


# --- cancel, on a page of its own -------------------------------------------------------------

@get(f"{MINE}/{{booking_id:uuid}}/cancel", name="cancel_booking_page")
async def cancel_page(request: Request, booking_id: FromPath[uuid.UUID],
                      bookings: NamedDependency[Bookings], courses: NamedDependency[Courses]
                      ) -> Template | Redirect:
    """Are you sure? The booking and a form that cancels it (no dialog, no script)."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, f"{MINE}/{booking_id}/cancel")
    booking = await _own(bookings, booking_id, resident_id)
    course = await courses.one(booking.course_id)
    return page(request, "cancel.html", shown=Shown(booking, course), error=None)


@post(f"{MINE}/{{booking_id:uuid}}/cancel", name="cancel_booking", status_code=303)
async def cancel_from_page(request: Request, booking_id: FromPath[uuid.UUID],
                           bookings: NamedDependency[Bookings],
                           courses: NamedDependency[Courses]) -> Template | Redirect:
    """The `/v1` cancel (`DELETE /v1/bookings/{id}`), then 303 to my bookings; a refusal (the
    deadline passed) is said on the confirm page."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, f"{MINE}/{booking_id}/cancel")
    try:
        await bookings.cancel(booking_id, resident_id)
    except Conflict as exc:
        _ = visitor(request).words.gettext
        booking = await _own(bookings, booking_id, resident_id)
        course = await courses.one(booking.course_id)
        error = _("已过取消截止时间，不能再取消。") if exc.code == "cancel_deadline_passed" \
            else _("这个预约已经不能取消了。")
        return page(request, "cancel.html", status_code=exc.status_code,
                    shown=Shown(booking, course), error=error)
    return see_other(f"{MINE}?done=cancelled", request)


# --- leave a waitlist -------------------------------------------------------------------------

@post("/me/waitlist/{course_id:int}/leave", name="leave_waitlist", status_code=303)
async def leave_from_page(request: Request, course_id: FromPath[int],
                          waitlist: NamedDependency[Waitlist]) -> Redirect:
    """`DELETE /v1/courses/{id}/waitlist/me`, then 303 to my bookings (gone already: fine)."""
    resident_id = visitor(request).resident_id
    if resident_id is None:
        return sign_in_first(request, MINE)
    # Gone already (a second tap, or promoted meanwhile): the page shows the facts.
    with contextlib.suppress(NotFound):
        await waitlist.leave(course_id, resident_id)
    return see_other(f"{MINE}?done=left", request)


# --- the demo payment -------------------------------------------------------------------------

class PayForm(msgspec.Struct):
    back: str = MINE


@post(f"{MINE}/{{booking_id:uuid}}/pay", name="demo_pay", status_code=303)
async def demo_pay(request: Request, booking_id: FromPath[uuid.UUID],
                   data: Annotated[PayForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
                   bookings: NamedDependency[Bookings], courses: NamedDependency[Courses],
                   payments: NamedDependency[Payments],
                   settings: NamedDependency[Settings]) -> Redirect:
    """模拟付款 (demo terms only): the signed callback a provider would send to
    `POST /v1/payments/callback`, settled by the same service; then back where it was pressed."""
    if not settings.demo:
        raise NotFound()
    resident_id = visitor(request).resident_id
    back = local_path(data.back, MINE)
    if resident_id is None:
        return sign_in_first(request, back)
    booking = await _own(bookings, booking_id, resident_id)
    course = await courses.one(booking.course_id)
    body = msgspec.json.encode({"provider_ref": f"demo-{uuid.uuid4()}",
                                "booking_id": booking.id, "amount_cents": course.price_cents,
                                "status": "paid"})
    await payments.settle(body, sign(settings.payment_secret, body))  # the page shows the facts
    return see_other(back, request)


HANDLERS: list[Any] = [my_bookings, cancel_page, cancel_from_page, leave_from_page, demo_pay]
