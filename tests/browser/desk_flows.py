"""Helpers of the venue's desk flows (test_desk_flows.py): staff sign-in on `/venue/login` with
the code the test server logs, a resident signed in on `/login`, a term file uploaded through
the page, and a check-in typed into `/venue/checkin`.

Sync like every browser test (see conftest.py); data is made through `Api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from .api import Api
from .flows import POLL_S, bearer, logged_code, path_of
from .pages import submit, upload_term
from .tab import Tab


def staff_sign_in(tab: Tab, server_log: Path, phone: str) -> None:
    """On `/venue/login`: the linked phone, then the code from the server's log; ends on the
    desk."""
    page = tab.page
    page.goto(tab.base_url + "/venue/login")
    since = server_log.stat().st_size
    submit("#login-phone", phone=phone)(page)
    expect(page.locator("#login-code")).to_be_visible()
    submit("#login-code", code=logged_code(server_log, since, phone))(page)
    assert path_of(page) == "/venue", page.url


def resident_sign_in(tab: Tab, server_log: Path, phone: str) -> None:
    """On `/login`: a resident's phone and code; ends on their bookings."""
    page = tab.page
    page.goto(tab.base_url + "/login")
    since = server_log.stat().st_size
    submit("#login-phone", phone=phone)(page)
    expect(page.locator("#login-code")).to_be_visible()
    submit("#login-code", code=logged_code(server_log, since, phone))(page)


def grab_as(api: Api, token: str, course_id: int, address: str) -> dict[str, Any]:
    """A seat through the API under a sign-in cookie's token."""
    answer = api.http.post(f"/v1/courses/{course_id}/bookings",
                           headers={**bearer(token), "X-Forwarded-For": address})
    assert answer.status_code == 201, f"grab {course_id}: {answer.text}"
    return answer.json()


def venue_course_ids(api: Api, venue_id: int) -> set[int]:
    answer = api.http.get("/v1/courses", params={"venue_id": venue_id, "limit": 100})
    assert answer.status_code == 200, answer.text
    return {course["id"] for course in answer.json()["items"]}


def import_term(page: Page, content: bytes) -> None:
    """On `/venue/import`: upload, see the preview, confirm; ends on the done line."""
    upload_term(content)(page)
    expect(page.locator("form#import-confirm")).to_be_visible()


def check_in_typed(page: Page, base_url: str, typed: str) -> str:
    """Type a token or a code into `/venue/checkin`; the answer's `data-checkin`."""
    page.goto(base_url + "/venue/checkin")
    submit("form#checkin", token=typed)(page)
    answer = page.locator("[data-checkin]")
    expect(answer).to_have_count(1)
    return answer.get_attribute("data-checkin") or ""


def edited(token: str) -> str:
    """The token with one character in its middle changed."""
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait for `condition` (the API's listings are cached for a second)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(POLL_S)
