"""Every page a resident can see, and how to get there.

`PAGES` maps a page's name (the name of its screenshot) to a function that sets up, through the
API, what the page shows and returns a `Visit`: the path to open, who is signed in, and an
action (submitting a form) that leads from there to the page under test. Each call sets up
fresh data, so a page can be visited again, e.g. at another text size.

To test a new page, add an entry; `test_every_page.py` runs every rule on it, in Chinese and
English, with and without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Page

from .api import NEAR, TITLE, Api, mobile, tag

Action = Callable[[Page], None]


@dataclass(frozen=True)
class Visit:
    path: str
    resident: str | None = None  # signed in as this resident (the sign-in cookie)
    then: Action | None = None  # done on `path`; it leads to the page under test
    status: int = 200  # what the page under test answers


def submit(form: str, **fields: str) -> Action:
    """Fill in `fields` (by name) of the form matching `form`, press its submit button and wait
    for the page it leads to."""
    def action(page: Page) -> None:
        for name, value in fields.items():
            page.locator(f"{form} [name={name}]").fill(value)
        with page.expect_navigation():
            page.locator(f"{form} [type=submit]").first.click()
    return action


PHONE_FORM = "form:has(input[name=phone]:not([type=hidden]))"


def course_list(api: Api) -> Visit:
    api.course()
    return Visit("/")


def near_me(api: Api) -> Visit:
    api.course()
    lat, lon = NEAR
    return Visit(f"/?lat={lat}&lon={lon}&km=1")


def login(api: Api) -> Visit:
    return Visit("/login")


def login_error(api: Api) -> Visit:
    """A phone number that is not one: the error beside the field (answered 400)."""
    return Visit("/login", then=submit(PHONE_FORM, phone="12345"), status=400)


def login_code(api: Api) -> Visit:
    return Visit("/login", then=submit(PHONE_FORM, phone=mobile()))


def course_open(api: Api) -> Visit:
    return Visit(f"/courses/{api.course()['id']}")


def course_soon(api: Api) -> Visit:
    return Visit(f"/courses/{api.course(opens_in_s=2 * 86400 + 3723)['id']}")


def course_full(api: Api) -> Visit:
    return Visit(f"/courses/{api.sold_out()['id']}", resident=api.resident())


def result_booked(api: Api) -> Visit:
    course = api.course()
    return Visit(f"/courses/{course['id']}", resident=api.resident(), then=submit("form#grab"))


def result_held(api: Api) -> Visit:
    course = api.course(price_cents=3000)
    return Visit(f"/courses/{course['id']}", resident=api.resident(), then=submit("form#grab"))


def result_waitlist(api: Api) -> Visit:
    course = api.sold_out()
    return Visit(f"/courses/{course['id']}", resident=api.resident(),
                 then=submit("form#waitlist"))


def result_not_open(api: Api) -> Visit:
    course = api.course(opens_in_s=3 * 3600)
    return Visit(f"/courses/{course['id']}", resident=api.resident(), then=submit("form#grab"))


def result_sold_out(api: Api) -> Visit:
    return Visit(f"/courses/{api.sold_out()['id']}/result", resident=api.resident())


def my_bookings(api: Api) -> Visit:
    """A booking, a hold of a paid course and a waitlist place."""
    me = api.resident()
    api.grab(api.course()["id"], me)
    api.grab(api.course(price_cents=3000)["id"], me)
    api.join_waitlist(api.sold_out()["id"], me)
    return Visit("/me/bookings", resident=me)


def cancel_confirm(api: Api) -> Visit:
    me = api.resident()
    booking = api.grab(api.course()["id"], me)
    return Visit(f"/me/bookings/{booking['id']}/cancel", resident=me)


def not_found(api: Api) -> Visit:
    return Visit("/courses/999999999", status=404)


PAGES: dict[str, Callable[[Api], Visit]] = {
    "list": course_list,
    "near": near_me,
    "login": login,
    "login-error": login_error,
    "login-code": login_code,
    "course": course_open,
    "course-soon": course_soon,
    "course-full": course_full,
    "result-booked": result_booked,
    "result-held": result_held,
    "result-waitlist": result_waitlist,
    "result-not-open": result_not_open,
    "result-sold-out": result_sold_out,
    "mine": my_bookings,
    "cancel": cancel_confirm,
    "not-found": not_found,
}


# --- the venue's desk (issue 12): signed in as staff of a venue (`Api.staff`) ----------------

TERM_HEADER = ("code,title,category,teacher,description,starts_at,ends_at,lessons,capacity,"
               "fee_yuan,sales_open_at")


def term_csv(rows: int = 2, bad_row: int | None = None) -> bytes:
    """A term file (CSV, English header) of `rows` courses a month from now, codes unique to
    this call; spreadsheet row `bad_row` (header = row 1) has a capacity that is no number."""
    day = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d")
    opens = (datetime.now(UTC) + timedelta(days=20)).strftime("%Y-%m-%d")
    batch = tag()
    lines = [TERM_HEADER]
    for n in range(2, rows + 2):
        capacity = "lots" if n == bad_row else "25"
        lines.append(f"T{batch}-{n},{TITLE} {batch}-{n},书法,李老师,,{day} 19:00,"
                     f"{day} 21:00,12,{capacity},0,{opens} 20:00")
    return ("\n".join(lines) + "\n").encode()


def upload_term(content: bytes) -> Action:
    """On `/venue/import`: choose `content` as the file and press the check button."""
    def action(page: Page) -> None:
        page.set_input_files("form#import-upload input[name=file]", files=[
            {"name": "term.csv", "mimeType": "text/csv", "buffer": content}])
        with page.expect_navigation():
            page.locator("form#import-upload [type=submit]").click()
    return action


def submit_unchecked(form: str) -> Action:
    """Press the submit button of `form` as it is, past the browser's own checks (as a browser
    without them would send it), and wait for the page it leads to."""
    def action(page: Page) -> None:
        page.locator(form).evaluate("form => { form.noValidate = true; }")
        with page.expect_navigation():
            page.locator(f"{form} [type=submit]").first.click()
    return action


def venue_login(api: Api) -> Visit:
    return Visit("/venue/login")


def desk(api: Api) -> Visit:
    """Two courses, one of them booked."""
    venue_id = api.venue()["id"]
    api.course(venue_id=venue_id)
    api.grab(api.course(venue_id=venue_id)["id"], api.resident())
    return Visit("/venue", resident=api.staff(venue_id))


def desk_new(api: Api) -> Visit:
    return Visit("/venue/courses/new", resident=api.staff(api.venue()["id"]))


def desk_new_error(api: Api) -> Visit:
    return Visit("/venue/courses/new", resident=api.staff(api.venue()["id"]),
                 then=submit_unchecked("form#publish-course"), status=400)


def roster(api: Api) -> Visit:
    """A one-seat course: a booking and a waiter."""
    venue_id = api.venue()["id"]
    course = api.course(venue_id=venue_id, capacity=1)
    api.grab(course["id"], api.resident())
    api.join_waitlist(course["id"], api.resident())
    return Visit(f"/venue/courses/{course['id']}/roster", resident=api.staff(venue_id))


def import_form(api: Api) -> Visit:
    return Visit("/venue/import", resident=api.staff(api.venue()["id"]))


def import_refused(api: Api) -> Visit:
    return Visit("/venue/import", resident=api.staff(api.venue()["id"]),
                 then=upload_term(term_csv(rows=3, bad_row=3)), status=422)


def import_preview(api: Api) -> Visit:
    return Visit("/venue/import", resident=api.staff(api.venue()["id"]),
                 then=upload_term(term_csv()))


def checkin(api: Api) -> Visit:
    return Visit("/venue/checkin", resident=api.staff(api.venue()["id"]))


def checkin_result(api: Api) -> Visit:
    """A booking of a lesson about to start: its QR's token, typed in."""
    venue_id = api.venue()["id"]
    me = api.resident()
    booking = api.grab(api.lesson_now(venue_id)["id"], me)
    token = api.checkin_of(booking["id"], me)["token"]
    return Visit("/venue/checkin", resident=api.staff(venue_id),
                 then=submit("form#checkin", token=token))


def my_record(api: Api) -> Visit:
    """A resident checked in to one lesson."""
    me, _ = api.attended(api.venue()["id"])
    return Visit("/me/record", resident=me)


DESK_PAGES: dict[str, Callable[[Api], Visit]] = {
    "venue-login": venue_login,
    "desk": desk,
    "desk-new": desk_new,
    "desk-new-error": desk_new_error,
    "roster": roster,
    "import": import_form,
    "import-refused": import_refused,
    "import-preview": import_preview,
    "checkin": checkin,
    "checkin-result": checkin_result,
    "record": my_record,
}
PAGES.update(DESK_PAGES)
