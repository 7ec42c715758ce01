"""What a resident does on the pages, end to end on a phone, with JavaScript on and off where
the page works both ways: find a class near home, sign in, grab, see the booking and its QR;
join a waitlist; pay a hold; the same in English; watch the seats fall live; cancel. And a
cookie-carrying POST without the CSRF token books nothing.

Every flow ends with the tab's record: no dialog, no pop-up, no request to another origin, no
script error, no own file that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from booking.web.i18n import Words

from . import rules
from .api import TITLE, Api, mobile
from .flows import (
    FAR_M,
    NEAR_M,
    OBSERVE_STREAM,
    api_get,
    bearer,
    bookings_of,
    confirmed_with_qr,
    cookie_token,
    follow,
    go,
    listed,
    locate_me,
    neighbourhood,
    path_of,
    pick_point,
    seats_left,
    sign_in_on_page,
)
from .pages import choose_wishes, release_of, submit
from .tab import Tab

JS = [pytest.param(True, id="js"), pytest.param(False, id="nojs")]
LIVE_S = 3  # an API grab shows on an open course page within this (the acceptance bar)
POLLED_S = 10  # ... and without EventSource, by polling


def nearest_first(page_cards: list[dict], near_id: int, far_id: int, lang: str) -> None:
    """The two classes of the neighbourhood, nearest first, each with its distance."""
    assert [card["id"] for card in page_cards] == [near_id, far_id], page_cards
    near, far = page_cards
    assert abs(near["metres"] - NEAR_M) < 20 and abs(far["metres"] - FAR_M) < 50, page_cards
    words = Words(lang)
    assert [near["words"], far["words"]] == [words.distance(near["metres"]),
                                             words.distance(far["metres"])]


def grab_signed_out_then_sign_in(tab: Tab, course_id: int, server_log: Path) -> None:
    """On the course page, signed out: the big button leads to `/login`, and signing in
    leads back to the course."""
    page = tab.page
    submit("form#grab")(page)
    assert path_of(page) == "/login", page.url
    sign_in_on_page(page, server_log, mobile())
    assert path_of(page) == f"/courses/{course_id}", page.url


@pytest.mark.parametrize("js", JS)
def test_a_resident_finds_a_class_near_home_grabs_it_and_shows_its_qr(
        js: bool, api: Api, open_tab: Callable[..., Tab], server_log: Path,
        tmp_path: Path) -> None:
    hood = neighbourhood(api)
    course_id = hood.near["id"]
    tab = open_tab(js=js)
    page = tab.page

    if js:
        locate_me(tab, hood.origin)
    else:
        pick_point(tab, hood)
    cards = listed(page)
    nearest_first(cards, course_id, hood.far["id"], "zh")
    assert cards[0]["words"] == "约 300 米"

    follow(page, page.locator("section.results article.card h3 a").first)
    assert path_of(page) == f"/courses/{course_id}"
    grab_signed_out_then_sign_in(tab, course_id, server_log)
    submit("form#grab")(page)
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "confirmed")
    expect(page.locator("#result-words")).to_have_text("已抢到")

    follow(page, page.locator("[data-result] a[href='/me/bookings']"))
    confirmed_with_qr(tab, api, course_id, tmp_path / "qr.png")
    assert tab.problems() == []


@pytest.mark.parametrize("js", JS)
def test_a_full_class_takes_a_resident_onto_its_waitlist(
        js: bool, api: Api, open_tab: Callable[..., Tab]) -> None:
    course = api.sold_out()
    me = api.resident()
    tab = open_tab(js=js, resident_token=api.token(me))
    page = tab.page

    go(tab, f"/courses/{course['id']}")
    expect(page.locator("[data-seat-status]")).to_have_text("已满")
    expect(page.locator("#seats-left")).to_have_text("0")
    expect(page.locator("form#grab")).to_have_count(0)
    submit("form#waitlist")(page)
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "waitlist")
    expect(page.locator("#result-words")).to_have_text("候补第 1 位")

    follow(page, page.locator("[data-result] a[href='/me/bookings']"))
    place = page.locator(f'[data-waitlist-position][data-course-id="{course["id"]}"]')
    expect(place).to_have_attribute("data-waitlist-position", "1")
    expect(place).to_contain_text("候补第 1 位")
    waiting = api_get(api, "/v1/me/waitlist", api.token(me))
    assert [(w["course_id"], w["position"]) for w in waiting] == [(course["id"], 1)]
    assert bookings_of(api, api.token(me), course["id"]) == []
    assert tab.problems() == []


@pytest.mark.parametrize("js", JS)
def test_a_hold_of_a_paid_class_is_paid_with_the_demo_button(
        js: bool, api: Api, open_tab: Callable[..., Tab], tmp_path: Path) -> None:
    course = api.course(price_cents=3000)
    me = api.resident()
    tab = open_tab(js=js, resident_token=api.token(me))
    page = tab.page

    go(tab, f"/courses/{course['id']}")
    submit("form#grab")(page)
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "held")
    expect(page.locator("#result-words")).to_have_text(
        f"请在 {course['hold_minutes']} 分钟内付款")
    assert [b["status"] for b in bookings_of(api, api.token(me), course["id"])] == ["held"]

    submit("form#pay")(page)
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "confirmed")
    expect(page.locator("#result-words")).to_have_text("已抢到")
    follow(page, page.locator("[data-result] a[href='/me/bookings']"))
    confirmed_with_qr(tab, api, course["id"], tmp_path / "qr.png")
    assert tab.problems() == []


@pytest.mark.parametrize("js", JS)
def test_after_the_english_switch_every_next_page_is_english(
        js: bool, api: Api, open_tab: Callable[..., Tab], server_log: Path) -> None:
    """Only the course's title is data a page may show unmarked (a `<title>` cannot be
    marked): every other name, address or teacher must be inside `translate="no"`."""
    hood = neighbourhood(api)
    course_id = hood.near["id"]
    tab = open_tab(js=js)
    page = tab.page
    problems: list[str] = []

    def english(name: str) -> None:
        problems.extend(f"{name} ({page.url}): {problem}" for problem in
                        rules.language(page, "en") + rules.chinese_in_english(page, [TITLE]))

    go(tab, "/")
    assert rules.language(page, "zh") == []
    follow(page, page.locator('a[hreflang="en"]'))
    english("list")
    pick_point(tab, hood)
    english("near a point")
    nearest_first(listed(page), course_id, hood.far["id"], "en")
    follow(page, page.locator("section.results article.card h3 a").first)
    english("course")
    submit("form#grab")(page)
    english("login")
    assert path_of(page) == "/login"
    sign_in_on_page(page, server_log, mobile())
    assert path_of(page) == f"/courses/{course_id}"
    submit("form#grab")(page)
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "confirmed")
    english("result")
    follow(page, page.locator("[data-result] a[href='/me/bookings']"))
    expect(page.locator(f'[data-booking-id][data-course-id="{course_id}"]')).to_have_count(1)
    english("my bookings")

    assert not problems, "\n".join(problems)
    assert tab.problems() == []


def test_the_login_code_page_is_english_too(api: Api, open_tab: Callable[..., Tab]) -> None:
    tab = open_tab(lang="en")
    go(tab, "/login")
    submit("#login-phone", phone=mobile())(tab.page)
    expect(tab.page.locator("#login-code")).to_be_visible()
    assert rules.language(tab.page, "en") + rules.chinese_in_english(tab.page) == []
    assert tab.problems() == []


def test_seats_fall_live_on_an_open_course_page(api: Api,
                                                open_tab: Callable[..., Tab]) -> None:
    capacity = 40
    course = api.course(capacity=capacity)
    tab = open_tab()
    page = tab.page
    page.add_init_script(OBSERVE_STREAM)
    go(tab, f"/courses/{course['id']}")
    seats = page.locator("#seats-left")

    page.wait_for_function("() => window.seatEvents && window.seatEvents.length > 0")
    assert page.evaluate("window.seatEvents[0]") == {
        "course_id": course["id"], "seats_left": capacity, "status": "open"}
    expect(seats).to_have_text(str(capacity))

    api.grab(course["id"], api.resident())
    expect(seats).to_have_text(str(capacity - 1), timeout=LIVE_S * 1000)

    for _ in range(15):
        api.grab(course["id"], api.resident())
    expect(seats).to_have_text(str(capacity - 16), timeout=LIVE_S * 1000)
    assert seats_left(api, course["id"]) == capacity - 16
    assert tab.problems() == []


def test_without_eventsource_the_page_polls_the_seats(api: Api,
                                                      open_tab: Callable[..., Tab]) -> None:
    course = api.course(capacity=10)
    tab = open_tab()
    page = tab.page
    page.add_init_script("delete window.EventSource")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    seats_path = f"/courses/{course['id']}/seats"
    with page.expect_response(lambda response: response.url.endswith(seats_path)):
        go(tab, f"/courses/{course['id']}")
    seats = page.locator("#seats-left")
    expect(seats).to_have_text("10")

    api.grab(course["id"], api.resident())
    expect(seats).to_have_text("9", timeout=POLLED_S * 1000)
    assert not [url for url in asked if url.endswith("/live")], asked
    assert tab.problems() == []


def test_a_post_without_the_csrf_token_is_refused_and_books_nothing(
        api: Api, open_tab: Callable[..., Tab]) -> None:
    """The sign-in cookie alone is not enough: a POST from a script (as a page of another
    origin would send it) without the form's token, or with a made-up one, is refused."""
    course = api.course(capacity=5)
    me = api.resident()
    tab = open_tab(resident_token=api.token(me))
    page = tab.page
    go(tab, f"/courses/{course['id']}")
    grab_path = f"/courses/{course['id']}/grab"

    statuses = page.evaluate("""async (path) => {
      const bare = await fetch(path, {method: 'POST', credentials: 'include'});
      const forged = await fetch(path, {
        method: 'POST', credentials: 'include',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'},
        body: '_csrf_token=forged'});
      return [bare.status, forged.status];
    }""", grab_path)

    assert statuses == [403, 403]
    assert bookings_of(api, api.token(me), course["id"]) == []
    assert seats_left(api, course["id"]) == 5
    assert tab.failed_files == [f"403 {tab.base_url}{grab_path}"] * 2
    tab.failed_files.clear()
    submit("form#grab")(page)  # the same cookie with the form's token: a booking
    expect(page.locator("[data-result]")).to_have_attribute("data-result", "confirmed")
    assert [b["status"] for b in bookings_of(api, api.token(me), course["id"])] == [
        "confirmed"]
    assert tab.problems() == []


@pytest.mark.parametrize("js", JS)
def test_a_booking_is_cancelled_on_a_confirm_page(js: bool, api: Api,
                                                  open_tab: Callable[..., Tab]) -> None:
    course = api.course(capacity=3)
    me = api.resident()
    booking = api.grab(course["id"], me)
    tab = open_tab(js=js, resident_token=api.token(me))
    page = tab.page
    card = page.locator(f'article[data-booking-id="{booking["id"]}"]')

    go(tab, "/me/bookings")
    follow(page, card.locator('a[href$="/cancel"]'))
    assert path_of(page) == f"/me/bookings/{booking['id']}/cancel"
    expect(page.locator("form#cancel")).to_be_visible()
    assert [b["status"] for b in bookings_of(api, api.token(me), course["id"])] == [
        "confirmed"]  # nothing happens before the confirm

    submit("form#cancel")(page)
    assert path_of(page) == "/me/bookings"
    expect(card.locator("[data-status]")).to_have_attribute("data-status", "cancelled")
    expect(card.locator("[data-status]")).to_have_text("已取消")
    expect(card.locator(".qr")).to_have_count(0)
    assert [b["status"] for b in bookings_of(api, api.token(me), course["id"])] == [
        "cancelled"]
    assert seats_left(api, course["id"]) == 3
    assert tab.problems() == []


@pytest.mark.parametrize("js", JS)
def test_a_resident_enters_wishes_from_a_course_page_changes_them_and_withdraws(
        js: bool, api: Api, open_tab: Callable[..., Tab], server_log: Path) -> None:
    """A lottery's course page leads to the release (no grab); signing in leads back there;
    the wishes chosen are the API's entry; changed, the receipt stays; withdrawn, it is gone."""
    release = release_of(api, "lottery")
    first, second, third = release["course_ids"]
    path = f"/releases/{release['id']}"
    tab = open_tab(js=js)
    page = tab.page

    go(tab, f"/courses/{first}")
    expect(page.locator("form#grab")).to_have_count(0)
    follow(page, page.locator("a#release-button", has_text="报名中：去填写志愿"))
    assert path_of(page) == path
    follow(page, page.locator("#my-entry a", has_text="登录后填写志愿"))
    sign_in_on_page(page, server_log, mobile())
    assert path_of(page) == path, page.url

    choose_wishes(second, first)(page)
    expect(page.locator("#my-entry [role=status]")).to_have_text(
        "志愿已保存。截止前可以随时修改或撤回。")
    receipt = page.locator("[data-entry-id]").get_attribute("data-entry-id")
    token = cookie_token(tab)
    entry = api_get(api, f"/v1/releases/{release['id']}/entry", token)
    assert (entry["entry_id"], entry["wishes"]) == (receipt, [second, first])
    expect(page.locator("select#wish-1")).to_have_value(str(second))

    choose_wishes(third)(page)  # only wish 1 changes: wish 2 was filled in from the entry
    again = api_get(api, f"/v1/releases/{release['id']}/entry", token)
    assert again["entry_id"] == receipt and again["wishes"] == [third, first]

    submit("form#withdraw")(page)
    expect(page.locator("#my-entry [role=status]")).to_have_text(
        "已撤回报名，您不参加这次抽签。")
    expect(page.locator("[data-entry-id]")).to_have_count(0)
    gone = api.http.get(f"/v1/releases/{release['id']}/entry", headers=bearer(token))
    assert gone.status_code == 404
    assert tab.problems() == []
