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

from playwright.sync_api import Page

from .api import NEAR, Api, mobile

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
