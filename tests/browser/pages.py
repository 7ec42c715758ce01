"""Every page a resident can see, and how to get there.

`PAGES` maps a page's name (the name of its screenshot) to a function that sets up, through the
API, what the page shows and returns a `Visit`: the path to open, who is signed in, and an
action (submitting a form) that leads from there to the page under test. Each call sets up
fresh data, so a page can be visited again, e.g. at another text size.

To test a new page, add an entry; `test_every_page.py` runs every rule on it, in Chinese and
English, with and without JavaScript.
"""

from __future__ import annotations

import time
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


# --- releases (issue 13): a release's page, and a course page while its draw is pending -------

RELEASE_BEACON = "2718 2818 sealed at the release's announcement"


def release_of(api: Api, mode: str, courses: int = 3, capacity: int = 20,
               **fields: object) -> dict[str, object]:
    """A release of new courses at one venue, opened a minute ago (a lottery's entries close in
    an hour unless `closes_at` says otherwise); its title is data, as a course's is."""
    venue_id = api.venue()["id"]
    now = datetime.now(UTC)
    body: dict[str, object] = {
        "title": f"{TITLE} {tag()}", "mode": mode, "term": f"term-{tag()}",
        "course_ids": [api.course(venue_id=venue_id, capacity=capacity)["id"]
                       for _ in range(courses)],
        "opens_at": (now - timedelta(minutes=1)).isoformat()}
    if mode != "fcfs":
        body |= {"beacon": RELEASE_BEACON, "max_wishes": 3}
    if mode == "lottery":
        body["closes_at"] = (now + timedelta(hours=1)).isoformat()
    answer = api.http.post("/v1/releases", json={**body, **fields}, headers=api.operator)
    assert answer.status_code == 201, f"POST /v1/releases: {answer.text}"
    return answer.json()


def enter(api: Api, release_id: object, resident: str, wishes: list[object]) -> None:
    answer = api.http.put(f"/v1/releases/{release_id}/entry", json={"wishes": wishes},
                          headers={"Authorization": f"Bearer {api.token(resident)}"})
    assert answer.status_code == 201, f"entry in {release_id}: {answer.text}"


def choose_wishes(*course_ids: object) -> Action:
    """On a release page: pick `course_ids` as wishes 1, 2, ... and submit `form#entry`."""
    def action(page: Page) -> None:
        for rank, course_id in enumerate(course_ids, start=1):
            page.select_option(f"form#entry select#wish-{rank}", str(course_id))
        with page.expect_navigation():
            page.locator("form#entry [type=submit]").click()
    return action


def release_entry(api: Api) -> Visit:
    """A lottery open for entries: wishes chosen and submitted, the page with the receipt."""
    release = release_of(api, "lottery")
    first, second, _ = release["course_ids"]
    return Visit(f"/releases/{release['id']}", resident=api.resident(),
                 then=choose_wishes(second, first))


def release_drawn(api: Api) -> Visit:
    """A drawn lottery (term cap 1, one-seat courses): one wish won, one waiting, one not."""
    closes = datetime.now(UTC) + timedelta(seconds=2)
    release = release_of(api, "lottery", capacity=1, term_cap=1, closes_at=closes.isoformat())
    a, b, c = release["course_ids"]
    me = api.resident()
    for who, wishes in ((me, [a, b, c]), (api.resident(), [a, b, c]),
                        (api.resident(), [a, b, c]), (api.resident(), [a, c])):
        enter(api, release["id"], who, wishes)
    deadline = time.monotonic() + 30
    while True:  # entries close two seconds after creation: draw as soon as they have
        answer = api.http.post(f"/v1/releases/{release['id']}/draw", headers=api.operator)
        if answer.status_code in (200, 201):
            break
        assert answer.json().get("code") == "entries_open" and time.monotonic() < deadline, \
            f"draw {release['id']}: {answer.text}"
        time.sleep(0.2)
    return Visit(f"/releases/{release['id']}", resident=me)


def release_fcfs(api: Api) -> Visit:
    return Visit(f"/releases/{release_of(api, 'fcfs', term_cap=2)['id']}")


def course_draw_pending(api: Api) -> Visit:
    """A course of a lottery open for entries: its button leads to the release."""
    release = release_of(api, "lottery", courses=1)
    return Visit(f"/courses/{release['course_ids'][0]}", resident=api.resident())


RELEASE_PAGES: dict[str, Callable[[Api], Visit]] = {
    "release-entry": release_entry,
    "release-drawn": release_drawn,
    "release-fcfs": release_fcfs,
    "course-draw-pending": course_draw_pending,
}
PAGES.update(RELEASE_PAGES)
