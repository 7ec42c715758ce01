"""Helpers of the flow tests (test_flows.py): a neighbourhood of teaching points to look for
classes in, finding them near me (the browser's location, or a picked point), signing in on
`/login` with the code the test server logs, and reading a booking back: its QR code decoded
from a screenshot, and the API's view under the sign-in cookie's token.

Sync like every browser test (see conftest.py); data is made through `Api`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zxingcpp
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from booking.web.render import TOKEN_COOKIE

from .api import DISTRICT, Api, tag
from .pages import submit
from .tab import Tab

M_PER_DEGREE = 111_320  # metres per degree of latitude, near enough for a test's layout
NEAR_M, FAR_M = 300, 2_000  # how far the two classes are from where the resident stands
CODE_LINE = re.compile(r"login_code phone_last4=(\d{4}) code=(\d{6})")
LOG_WAIT_S = 10.0
POLL_S = 0.05

# Notes every `seats` event the page's stream delivers in `window.seatEvents` (the page's own
# listener still gets each one): how a test knows the stream is open before it grabs.
OBSERVE_STREAM = """(() => {
  const Original = window.EventSource;
  if (!Original) return;
  window.seatEvents = [];
  window.EventSource = function (url, options) {
    const source = new Original(url, options);
    source.addEventListener('seats', (event) => window.seatEvents.push(JSON.parse(event.data)));
    return source;
  };
  window.EventSource.prototype = Original.prototype;
})();"""


@dataclass(frozen=True)
class Neighbourhood:
    """A district of its own, far from every other test's venues: the teaching point
    `point` (no class of its own) where the resident stands, a class `NEAR_M` north of it and
    one `FAR_M` north of it (made first, so nearest-first is not the order they were made)."""

    district: str
    origin: tuple[float, float]
    point: dict[str, Any]
    near: dict[str, Any]
    far: dict[str, Any]


def fresh_origin(api: Api) -> tuple[float, float]:
    """A spot in southern China with no class within 10 km (other tests, earlier runs)."""
    for _ in range(50):
        spot = (round(22 + 0.2 * secrets.randbelow(50), 1),
                round(100 + 0.2 * secrets.randbelow(100), 1))
        found = api.http.get("/v1/courses", params={"lat": spot[0], "lon": spot[1], "km": 10,
                                                    "limit": 1})
        assert found.status_code == 200, found.text
        if not found.json()["items"]:
            return spot
    raise AssertionError("no empty spot found for a neighbourhood")


def north_of(origin: tuple[float, float], metres: float) -> dict[str, float]:
    return {"lat": round(origin[0] + metres / M_PER_DEGREE, 6), "lon": origin[1]}


def neighbourhood(api: Api, **course_fields: Any) -> Neighbourhood:
    district = f"{DISTRICT} {tag()}"
    origin = fresh_origin(api)
    point = api.venue(district=district, lat=origin[0], lon=origin[1])
    far_venue = api.venue(district=district, **north_of(origin, FAR_M))
    near_venue = api.venue(district=district, **north_of(origin, NEAR_M))
    far = api.course(venue_id=far_venue["id"], **course_fields)
    near = api.course(venue_id=near_venue["id"], **course_fields)
    return Neighbourhood(district, origin, point, near, far)


def go(tab: Tab, path: str) -> None:
    tab.page.goto(tab.base_url + path)


def follow(page: Page, link: Locator) -> None:
    """Click a link (or a button) and wait for the page it leads to."""
    with page.expect_navigation():
        link.click()


def path_of(page: Page) -> str:
    return urlsplit(page.url).path


def query_of(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


# --- near me ----------------------------------------------------------------------------------

def locate_me(tab: Tab, origin: tuple[float, float]) -> None:
    """JavaScript on: the phone allows its location, standing at `origin`; on `/` the
    resident presses "use my location"."""
    tab.context.grant_permissions(["geolocation"], origin=tab.base_url)
    tab.context.set_geolocation({"latitude": origin[0], "longitude": origin[1]})
    go(tab, "/")
    button = tab.page.locator("button[data-locate]")
    expect(button).to_be_visible()
    follow(tab.page, button)
    assert {"lat", "lon"} <= query_of(tab.page).keys(), tab.page.url


def pick_point(tab: Tab, hood: Neighbourhood) -> None:
    """No location needed: on `/` pick the district, then the teaching point."""
    page = tab.page
    district = page.locator(f'#filter-district option[value="{hood.district}"]')
    deadline = time.monotonic() + 10
    go(tab, "/")
    while district.count() == 0:  # the districts' list is cached for a second
        assert time.monotonic() < deadline, f"district {hood.district} not offered on /"
        go(tab, "/")
    page.select_option("#filter-district", hood.district)
    follow(page, page.locator("form.filters button[type=submit]"))
    follow(page, page.locator("section.points a", has_text=hood.point["name"]))
    assert query_of(page).get("point") == [str(hood.point["id"])], page.url


def listed(page: Page) -> list[dict[str, Any]]:
    """The cards of the list as shown: course id, distance in metres and in words."""
    return page.locator("section.results article.card").evaluate_all("""cards => cards.map(
      card => {
        const distance = card.querySelector('.distance');
        return {id: Number(card.dataset.courseId),
                metres: distance ? Number(distance.dataset.distanceM) : null,
                words: distance ? distance.textContent.trim() : null};
      })""")


# --- signing in -------------------------------------------------------------------------------

def logged_code(server_log: Path, since: int, phone: str) -> str:
    """The code the server logged for `phone` after byte `since` of its log."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        with server_log.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        codes = [code for last4, code in CODE_LINE.findall(text) if last4 == phone[-4:]]
        if codes:
            return codes[-1]
        assert time.monotonic() < deadline, f"no login_code line for …{phone[-4:]} in the log"
        time.sleep(POLL_S)


def sign_in_on_page(page: Page, server_log: Path, phone: str) -> None:
    """On `/login`: the phone, then the code from the server's log; ends where `next` says."""
    assert path_of(page) == "/login", page.url
    since = server_log.stat().st_size
    submit("#login-phone", phone=phone)(page)
    expect(page.locator("#login-code")).to_be_visible()
    submit("#login-code", code=logged_code(server_log, since, phone))(page)


def cookie_token(tab: Tab) -> str:
    """The sign-in cookie's value: the JWT the API takes as Bearer."""
    found = [cookie["value"] for cookie in tab.context.cookies(tab.base_url)
             if cookie["name"] == TOKEN_COOKIE]
    assert found and found[0], f"no {TOKEN_COOKIE} cookie"
    return found[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_get(api: Api, path: str, token: str) -> Any:
    answer = api.http.get(path, headers=bearer(token))
    assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text}"
    return answer.json()


def bookings_of(api: Api, token: str, course_id: int) -> list[dict[str, Any]]:
    """`GET /v1/me/bookings` under `token`, those of one course."""
    return [b for b in api_get(api, "/v1/me/bookings", token) if b["course_id"] == course_id]


def seats_left(api: Api, course_id: int) -> int:
    answer = api.http.get(f"/courses/{course_id}/seats")
    assert answer.status_code == 200, answer.text
    return answer.json()["seats_left"]


# --- my bookings ------------------------------------------------------------------------------

def qr_payloads(qr: Locator, path: Path) -> list[str]:
    """What the QR codes in a screenshot of `qr` hold, as a camera would read them."""
    qr.screenshot(path=path)
    with Image.open(path) as image:
        return [found.text for found in zxingcpp.read_barcodes(image)]


def confirmed_with_qr(tab: Tab, api: Api, course_id: int, shot: Path) -> str:
    """On `/me/bookings`: the course's booking is confirmed, with a QR of >= 200 CSS px that
    decodes to its check-in token and the code below it; the API shows the same booking
    under the cookie's token. Returns the booking's id."""
    card = tab.page.locator(f'article[data-booking-id][data-course-id="{course_id}"]')
    expect(card).to_have_count(1)
    booking_id = card.get_attribute("data-booking-id")
    expect(card.locator("[data-status]")).to_have_attribute("data-status", "confirmed")
    qr = card.locator(".qr")
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 200 and box["height"] >= 200, box
    token = cookie_token(tab)
    checkin = api_get(api, f"/v1/bookings/{booking_id}/checkin", token)
    assert qr_payloads(qr, shot) == [checkin["token"]]
    expect(card.locator("[data-checkin-code]")).to_have_text(checkin["code"])
    assert [(b["id"], b["status"]) for b in bookings_of(api, token, course_id)] == [
        (booking_id, "confirmed")]
    return str(booking_id)
