"""What venue staff do at the desk, end to end on a phone, with JavaScript on and off: sign in
with a phone the operator linked, watch a grab made through the API reach the dashboard (live,
JavaScript on), import a term (preview, then confirm), find the resident on the roster with a
masked phone, and check them in at the door: by the QR decoded from the resident's own
`/me/bookings`, again, by the typed code, and with an edited token; then the resident's
learning record shows the lesson's hours.

Every flow ends with each tab's record: no dialog, no pop-up, no request to another origin, no
script error, no own file that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from booking.ops.rehearsal import address_of

from .api import Api, mobile
from .desk_flows import (
    check_in_typed,
    edited,
    eventually,
    grab_as,
    import_term,
    resident_sign_in,
    staff_sign_in,
    venue_course_ids,
)
from .flows import (
    OBSERVE_STREAM,
    confirmed_with_qr,
    cookie_token,
    go,
    logged_code,
    path_of,
    qr_payloads,
)
from .pages import submit, term_csv
from .tab import Tab

JS = [pytest.param(True, id="js"), pytest.param(False, id="nojs")]
LIVE_S = 3  # an API grab shows on the open dashboard within this (the acceptance bar)
TERM_ROWS = 3
LESSON_HOURS = 2  # `Api.lesson_now`'s lesson: two hours


@pytest.mark.parametrize("js", JS)
def test_staff_sign_in_import_a_term_and_check_a_resident_in(
        js: bool, api: Api, open_tab: Callable[..., Tab], server_log: Path,
        tmp_path: Path) -> None:
    venue_id = api.venue()["id"]
    staff_phone, resident_phone = mobile(), mobile()
    api.link_staff(venue_id, staff_phone)
    lesson = api.lesson_now(venue_id, capacity=10)
    desk_tab, home_tab = open_tab(js=js), open_tab(js=js)
    desk = desk_tab.page
    if js:
        desk.add_init_script(OBSERVE_STREAM)

    staff_sign_in(desk_tab, server_log, staff_phone)
    seats = desk.locator(f'[data-seats-left][data-course-id="{lesson["id"]}"]')
    expect(seats).to_have_text("10")
    resident_sign_in(home_tab, server_log, resident_phone)
    if js:  # the stream is open before the grab
        desk.wait_for_function("() => window.seatEvents && window.seatEvents.length > 0")
    grab_as(api, cookie_token(home_tab), lesson["id"], address_of(resident_phone))
    if js:
        expect(seats).to_have_text("9", timeout=LIVE_S * 1000)
    else:
        go(desk_tab, "/venue")
        expect(seats).to_have_text("9")

    before = venue_course_ids(api, venue_id)
    term = term_csv(rows=TERM_ROWS)
    go(desk_tab, "/venue/import")
    import_term(desk, term)  # nothing written yet: every row is still to create
    expect(desk.locator('[data-preview-row][data-action="create"]')).to_have_count(TERM_ROWS)
    submit("form#import-confirm")(desk)
    expect(desk.locator("#import-done")).to_be_visible()
    import_term(desk, term)  # the same file again: every row is one to update
    expect(desk.locator('[data-preview-row][data-action="update"]')).to_have_count(TERM_ROWS)
    eventually(lambda: len(venue_course_ids(api, venue_id) - before) == TERM_ROWS)

    go(desk_tab, f"/venue/courses/{lesson['id']}/roster")
    masked = f"{resident_phone[:3]}****{resident_phone[7:]}"
    expect(desk.locator("td.phone")).to_have_text([masked])
    assert resident_phone not in desk.content()

    go(home_tab, "/me/bookings")
    confirmed_with_qr(home_tab, api, lesson["id"], tmp_path / "qr.png")
    card = home_tab.page.locator(f'article[data-booking-id][data-course-id="{lesson["id"]}"]')
    [scanned] = qr_payloads(card.locator(".qr"), tmp_path / "scan.png")
    code = card.locator("[data-checkin-code]").inner_text().strip()

    assert check_in_typed(desk, desk_tab.base_url, scanned) == "checked_in"
    assert check_in_typed(desk, desk_tab.base_url, scanned) == "already_checked_in"
    assert check_in_typed(desk, desk_tab.base_url, code) == "already_checked_in"
    assert check_in_typed(desk, desk_tab.base_url, edited(scanned)) == "refused"
    expect(desk.locator("[data-reason]")).to_have_attribute("data-reason", "invalid_token")

    go(home_tab, "/me/record")
    entry = home_tab.page.locator(f'[data-entry][data-course-id="{lesson["id"]}"]')
    expect(entry).to_have_count(1)
    assert float(entry.get_attribute("data-hours") or "0") == LESSON_HOURS
    assert path_of(home_tab.page) == "/me/record"
    assert desk_tab.problems() == [] and home_tab.problems() == []


def test_a_phone_linked_to_no_venue_gets_no_desk(api: Api, open_tab: Callable[..., Tab],
                                                 server_log: Path) -> None:
    tab = open_tab()
    page = tab.page
    phone = mobile()
    go(tab, "/venue/login")
    since = server_log.stat().st_size
    submit("#login-phone", phone=phone)(page)
    submit("#login-code", code=logged_code(server_log, since, phone))(page)
    assert tab.documents[-1].status == 403, tab.documents[-1].status
    expect(page.locator("#login-phone")).to_be_visible()  # back to the phone, told why
    expect(page.locator("#phone-error")).to_be_visible()
    go(tab, "/venue")
    assert path_of(page) == "/venue/login"
    assert tab.problems() == []
