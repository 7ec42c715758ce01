"""The venue's desk: its courses with live seats, publishing a course, a course's roster and its
CSV. For signed-in venue staff only (a `venue` token in the sign-in cookie).

Each page calls the service its `/v1` twin calls: the dashboard `GET /v1/courses?venue_id=`
(plus the counts of `GET /v1/courses/{id}/waitlist` and `.../roster`), publishing
`POST /v1/courses`, the roster `GET /v1/courses/{id}/roster` and `GET /v1/courses/{id}/waitlist`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from booking.bookings import Bookings, RosterEntryOut
from booking.core.errors import ApiError, Forbidden
from booking.courses import MAX_CAPACITY, MAX_PRICE_CENTS, CourseIn, CourseOut, CourseQuery, Courses
from booking.live import MAX_COURSES
from booking.venues import Venues
from booking.waitlist import CourseWaitingOut, Waitlist
from booking.web.i18n import BEIJING
from booking.web.render import page, see_other, staff_sign_in_first, visitor
from booking.web.spreadsheet import csv_bytes

DESK = "/venue"
NEW_COURSE = "/venue/courses/new"
TEXT_LIMITS = {"title": 200, "category": 60, "teacher": 200, "description": 5000, "code": 40}
REQUIRED = ("title", "category", "teacher", "starts_at", "ends_at", "capacity",
            "sales_open_at")
MOMENTS = ("starts_at", "ends_at", "sales_open_at", "cancel_deadline")
LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")
CSV_TIME = "%Y-%m-%d %H:%M"


def roster_path(course_id: int) -> str:
    return f"/venue/courses/{course_id}/roster"


# --- the dashboard ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeskRow:
    course: CourseOut
    waiting: int
    checkins: int


@get(DESK, name="desk")
async def dashboard(request: Request, courses: NamedDependency[Courses],
                    bookings: NamedDependency[Bookings], waitlist: NamedDependency[Waitlist],
                    done: FromQuery[str | None] = None) -> Template | Redirect:
    """The venue's courses, soonest first: seats left (live), how many wait, check-ins."""
    venue_id = visitor(request).venue_id
    if venue_id is None:
        return staff_sign_in_first(request, DESK)
    listed = await courses.page(CourseQuery(venue_id=venue_id, limit=MAX_COURSES))
    ids = [course.id for course in listed.items]
    waiting = await waitlist.waiting_counts(ids)
    checkins = await bookings.checkin_counts(ids)
    rows = [DeskRow(c, waiting.get(c.id, 0), checkins.get(c.id, 0)) for c in listed.items]
    return page(request, "desk.html", rows=rows, live_ids=",".join(map(str, ids)),
                more=listed.next_offset is not None, published=done == "published")


# --- publish a course -------------------------------------------------------------------------

class CourseForm(msgspec.Struct):
    """The publish form as typed: every field text, checked by `course_in`."""

    title: str = ""
    category: str = ""
    teacher: str = ""
    description: str = ""
    starts_at: str = ""
    ends_at: str = ""
    capacity: str = ""
    price_yuan: str = "0"
    sales_open_at: str = ""
    hold_minutes: str = "10"
    cancel_deadline: str = ""
    lessons: str = "1"
    code: str = ""


def beijing_moment(text: str) -> datetime | None:
    """A `datetime-local` value (Beijing time) as a moment; None if it is not one."""
    for shape in LOCAL_FORMATS:
        try:
            return datetime.strptime(text.strip(), shape).replace(tzinfo=BEIJING)
        except ValueError:
            continue
    return None


def whole_number(text: str, low: int, high: int) -> int | None:
    try:
        number = int(text.strip())
    except ValueError:
        return None
    return number if low <= number <= high else None


def price_cents(text: str) -> int | None:
    """Yuan with at most two decimals as cents; None when it is not such an amount."""
    try:
        yuan = Decimal(text.strip() or "0")
    except InvalidOperation:
        return None
    cents = yuan * 100
    if not yuan.is_finite() or cents != cents.to_integral_value():
        return None
    return int(cents) if 0 <= cents <= MAX_PRICE_CENTS else None


def course_in(form: CourseForm, _: Any) -> tuple[CourseIn | None, dict[str, str]]:
    """The form as the `/v1` body, or the error of each field that is wrong."""
    errors: dict[str, str] = {}
    for name, limit in TEXT_LIMITS.items():
        if len(getattr(form, name).strip()) > limit:
            errors[name] = _("最多 %(n)s 个字。") % {"n": limit}
    moments = {name: beijing_moment(getattr(form, name)) for name in MOMENTS}
    for name in MOMENTS:
        if getattr(form, name).strip() and moments[name] is None:
            errors[name] = _("请按“年-月-日 时:分”填写。")
    capacity = whole_number(form.capacity, 1, MAX_CAPACITY)
    if form.capacity.strip() and capacity is None:
        errors["capacity"] = _("请填写 1 到 %(n)s 之间的整数。") % {"n": MAX_CAPACITY}
    hold = whole_number(form.hold_minutes, 1, 1440)
    if hold is None:
        errors["hold_minutes"] = _("请填写 1 到 %(n)s 之间的整数。") % {"n": 1440}
    lessons = whole_number(form.lessons, 1, 52)
    if lessons is None:
        errors["lessons"] = _("请填写 1 到 %(n)s 之间的整数。") % {"n": 52}
    cents = price_cents(form.price_yuan)
    if cents is None:
        errors["price_yuan"] = _("请填写不超过 %(n)s 元的金额，最多两位小数。") % {
            "n": MAX_PRICE_CENTS // 100}
    for name in REQUIRED:
        if not getattr(form, name).strip():
            errors[name] = _("这一项必须填写。")
    errors.update(_order_errors(moments, _))
    if errors:
        return None, errors
    body = {"title": form.title.strip(), "category": form.category.strip(),
            "teacher": form.teacher.strip(), "description": form.description.strip(),
            "capacity": capacity, "price_cents": cents, "hold_minutes": hold,
            "lessons": lessons, "code": form.code.strip() or None,
            **{name: moment for name, moment in moments.items() if moment is not None}}
    try:
        return msgspec.convert(body, CourseIn), {}
    except msgspec.ValidationError as exc:  # e.g. a NUL character: name the field
        field = str(exc).rpartition("$.")[2].rstrip("`")
        return None, {field if field in body else "form": _("这一项含有不允许的字符。")}


def _order_errors(moments: dict[str, datetime | None], _: Any) -> dict[str, str]:
    starts, ends, opens = moments["starts_at"], moments["ends_at"], moments["sales_open_at"]
    errors = {}
    if starts and ends and ends <= starts:
        errors["ends_at"] = _("结束时间要晚于开课时间。")
    if starts and opens and opens > starts:
        errors["sales_open_at"] = _("开抢时间不能晚于开课时间。")
    return errors


async def _publish_page(request: Request, venues: Venues, form: CourseForm,
                        errors: dict[str, str], status_code: int = 200) -> Template:
    venue = await venues.one(visitor(request).venue_id or 0)
    return page(request, "desk_new.html", status_code=status_code, venue=venue, form=form,
                errors=errors)


@get(NEW_COURSE, name="desk_new_course")
async def new_course(request: Request, venues: NamedDependency[Venues]) -> Template | Redirect:
    """The publish form: every field of `POST /v1/courses`, times in Beijing time."""
    if visitor(request).venue_id is None:
        return staff_sign_in_first(request, NEW_COURSE)
    return await _publish_page(request, venues, CourseForm(), {})


@post(NEW_COURSE, name="desk_publish", status_code=303)
async def publish(request: Request,
                  data: Annotated[CourseForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
                  courses: NamedDependency[Courses],
                  venues: NamedDependency[Venues]) -> Template | Redirect:
    """`POST /v1/courses`'s service, then 303 to the dashboard; a wrong field is said beside
    it and nothing is written."""
    seen = visitor(request)
    if seen.venue_id is None or seen.user is None:
        return staff_sign_in_first(request, NEW_COURSE)
    body, errors = course_in(data, seen.words.gettext)
    if body is None:
        return await _publish_page(request, venues, data, errors, 400)
    try:
        await courses.create(body, seen.user)
    except ApiError as exc:  # the checks above should leave nothing for Postgres to refuse
        if exc.status_code >= 500:
            raise
        _ = seen.words.gettext
        wrong = ({"code": _("本教学点已有课程用这个编号。")} if exc.code == "code_taken"
                 else {"form": _("课程没有发布，请检查后重试。")})
        return await _publish_page(request, venues, data, wrong, exc.status_code)
    return see_other(f"{DESK}?done=published", request)


# --- the roster and its CSV -------------------------------------------------------------------

def not_yours(request: Request) -> Template:
    _ = visitor(request).words.gettext
    return page(request, "error.html", status_code=403, title=_("无权查看"), code="forbidden",
                message=_("这门课程属于其他场馆，您不能查看它的名单。"), back=DESK)


@get("/venue/courses/{course_id:int}/roster", name="desk_roster")
async def roster(request: Request, course_id: FromPath[int], courses: NamedDependency[Courses],
                 bookings: NamedDependency[Bookings],
                 waitlist: NamedDependency[Waitlist]) -> Template | Redirect:
    """A course's active bookings (phones masked, check-ins) and its waitlist."""
    found = await _roster(request, course_id, courses, bookings, waitlist)
    if not isinstance(found, Roster):
        return found
    return page(request, "desk_roster.html", course=found.course, entries=found.entries,
                places=found.places, checkins=sum(entry.checkins for entry in found.entries))


@dataclass(frozen=True, slots=True)
class Roster:
    course: CourseOut
    entries: list[RosterEntryOut]
    places: list[CourseWaitingOut]


async def _roster(request: Request, course_id: int, courses: Courses, bookings: Bookings,
                  waitlist: Waitlist) -> Roster | Template | Redirect:
    """The roster of a course of the signed-in staff's venue, or the page that says why not."""
    seen = visitor(request)
    if seen.venue_id is None or seen.user is None:
        return staff_sign_in_first(request, roster_path(course_id))
    try:
        entries = await bookings.roster_details(course_id, seen.user)
        places = await waitlist.of_course(course_id, seen.user)
    except Forbidden:
        return not_yours(request)
    return Roster(await courses.one(course_id), entries, places)


def roster_csv(course: CourseOut, entries: list[RosterEntryOut],
               places: list[CourseWaitingOut], _: Any) -> bytes:
    """UTF-8 with a BOM (so Excel reads the Chinese), every cell formula-safe."""
    status = {"confirmed": _("已确认"), "held": _("待付款")}
    rows: list[list[object]] = [[_("课程"), _("名单"), _("序号"), _("手机号"), _("状态"),
                                 _("时间"), _("签到次数")]]
    rows += [[course.title, _("预约"), n, entry.phone, status.get(entry.status, entry.status),
              entry.created_at.astimezone(BEIJING).strftime(CSV_TIME), entry.checkins]
             for n, entry in enumerate(entries, start=1)]
    rows += [[course.title, _("候补"), place.position, place.phone, _("候补中"),
              place.joined_at.astimezone(BEIJING).strftime(CSV_TIME), ""] for place in places]
    return csv_bytes(rows)


@get("/venue/courses/{course_id:int}/roster.csv", name="desk_roster_csv")
async def roster_download(request: Request, course_id: FromPath[int],
                          courses: NamedDependency[Courses],
                          bookings: NamedDependency[Bookings],
                          waitlist: NamedDependency[Waitlist]) -> Response[bytes] | Template \
        | Redirect:
    """The roster as a spreadsheet: bookings, then the waitlist."""
    found = await _roster(request, course_id, courses, bookings, waitlist)
    if not isinstance(found, Roster):
        return found
    return Response(roster_csv(found.course, found.entries, found.places,
                               visitor(request).words.gettext),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition":
                             f'attachment; filename="roster-{course_id}.csv"',
                             "Cache-Control": "no-store"})


HANDLERS: list[Any] = [dashboard, new_course, publish, roster, roster_download]
