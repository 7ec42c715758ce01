"""The residents' pages without JavaScript, as a plain browser uses them: a GET for the form (and
its CSRF cookie and hidden `_csrf_token`), a POST, a 303, the page it leads to. Signed in by the
cookie `booking_token` holding the same JWT the API takes as Bearer, so every booking made on a
page is checked through `/v1` under the same token, and in Postgres."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from conftest import (
    OPERATOR,
    PAYMENT_SECRET,
    SECRET,
    active_rows,
    grab,
    join_waitlist,
    make_course,
    resident,
    unique,
)
from nojs import forms_of, page_client, submit

from booking.app import create_app
from booking.checkin import checkin_code
from booking.core.auth import mint
from booking.core.settings import Settings
from booking.core.stores import open_redis
from booking.web.course_page import time_left
from booking.web.i18n import Words

TOKEN_COOKIE = "booking_token"


# --- a browser without JavaScript -------------------------------------------------------------

@asynccontextmanager
async def browser(server: str, who: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser without JavaScript signed in as resident `who` (None: signed out)."""
    async with page_client(server, mint(SECRET, "resident", who) if who else None) as client:
        yield client


def result_of(html: str) -> str:
    found = re.search(r'data-result="([a-z_]+)"', html)
    assert found, html
    return found.group(1)


def seats_left(html: str) -> int:
    found = re.search(r'<span id="seats-left" data-course-id="(\d+)"[^>]*>(\d+)</span>', html)
    assert found, html
    return int(found.group(2))


async def grab_on_page(client: httpx.AsyncClient, course_id: int) -> httpx.Response:
    """The big button, then the result page it leads to."""
    answer = await submit(client, f"/courses/{course_id}", "grab")
    assert answer.status_code == 303, answer.text
    assert urlsplit(answer.headers["location"]).path == f"/courses/{course_id}/result"
    return await client.get(answer.headers["location"])


async def api_bookings(who: str, http: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await http.get("/v1/me/bookings", headers=resident(who))
    assert response.status_code == 200, response.text
    return response.json()


# --- grab -------------------------------------------------------------------------------------

async def test_a_grab_on_a_page_shows_in_my_bookings_and_in_the_api(server, http, db):
    course = await make_course(http, capacity=5)
    who = unique("page")
    async with browser(server, who) as client:
        page = await client.get(f"/courses/{course['id']}")
        assert page.status_code == 200
        assert course["title"] in page.text and "Ms Li" in page.text
        assert "1 Test Road" in page.text and "免费" in page.text
        assert seats_left(page.text) == 5
        assert re.search(r'data-seat-status[^>]*data-full-text="已满"', page.text)
        assert "data-countdown" not in page.text  # sales are open
        assert "grab" in forms_of(page.text) and "waitlist" not in forms_of(page.text)

        result = await grab_on_page(client, course["id"])
        assert result_of(result.text) == "confirmed" and "已抢到" in result.text

        (booking,) = await api_bookings(who, http)
        assert booking["course_id"] == course["id"] and booking["status"] == "confirmed"
        mine = await client.get("/me/bookings")
        assert mine.status_code == 200
        card = booking_card(mine.text, booking["id"])
        assert 'data-status="confirmed"' in card and course["title"] in card
        assert 'class="qr"' in card
        code = re.search(r"data-checkin-code>([0-9A-Z]{8})<", card)
        assert code and code.group(1) == checkin_code(SECRET, booking["id"])
        assert seats_left((await client.get(f"/courses/{course['id']}")).text) == 4

        again = await grab_on_page(client, course["id"])  # the same seat, not a second one
        assert result_of(again.text) == "confirmed"
    assert await active_rows(db, course["id"]) == 1


def booking_card(html: str, booking_id: str) -> str:
    found = re.search(rf'<article[^>]*data-booking-id="{booking_id}".*?</article>', html, re.S)
    assert found, f"no card of booking {booking_id}"
    return found.group(0)


async def test_signed_out_the_button_shows_and_leads_to_sign_in_and_back(server, http, db):
    course = await make_course(http, capacity=3)
    async with browser(server, None) as client:
        page = await client.get(f"/courses/{course['id']}")
        assert "grab" in forms_of(page.text)
        answer = await submit(client, f"/courses/{course['id']}", "grab")
        assert answer.status_code == 303
        target = urlsplit(answer.headers["location"])
        assert target.path == "/login"
        assert parse_qs(target.query)["next"] == [f"/courses/{course['id']}"]
        for path in ("/me/bookings", f"/courses/{course['id']}/result"):
            answer = await client.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?")
    assert await active_rows(db, course["id"]) == 0


async def test_not_open_yet_counts_down_on_the_servers_clock_and_refuses(server, http, db):
    course = await make_course(http, capacity=3, opens_in_s=3 * 3600 + 125)
    opens_ms = datetime.fromisoformat(course["sales_open_at"]).timestamp() * 1000
    async with browser(server, unique("early")) as client:
        page = await client.get(f"/courses/{course['id']}")
        countdown = re.search(r'<span data-countdown data-opens-at="(\d+)" '
                              r'data-server-now="(\d+)"[^>]*>([^<]+)</span>', page.text)
        assert countdown, page.text
        assert abs(int(countdown.group(1)) - opens_ms) < 1000
        assert abs(int(countdown.group(2)) - time.time() * 1000) < 60_000
        assert re.fullmatch(r"3 时 \d+ 分 \d+ 秒", countdown.group(3))
        assert "开抢" in page.text

        result = await grab_on_page(client, course["id"])
        assert result_of(result.text) == "not_open"
        assert "尚未开抢（" in result.text and "开抢）" in result.text
    assert await active_rows(db, course["id"]) == 0


def test_the_countdown_says_days_hours_minutes_and_seconds_from_the_first_that_counts():
    zh = Words("zh")
    assert time_left(zh, 0) == "0 秒"
    assert time_left(zh, -5) == "0 秒"
    assert time_left(zh, 61) == "1 分 1 秒"
    assert time_left(zh, 3600) == "1 时 0 分 0 秒"
    assert time_left(zh, 2 * 86400 + 3 * 3600 + 4 * 60 + 5.9) == "2 天 3 时 4 分 5 秒"


async def test_a_cancelled_course_has_no_button(server, http, db):
    course = await make_course(http, capacity=3)
    cancelled = await http.patch(f"/v1/courses/{course['id']}", json={"status": "cancelled"},
                                 headers=OPERATOR)
    assert cancelled.status_code == 200, cancelled.text
    async with browser(server, unique("late")) as client:
        page = await client.get(f"/courses/{course['id']}")
        assert "已取消" in page.text
        assert not {"grab", "waitlist"} & set(forms_of(page.text))
        result = await client.get(f"/courses/{course['id']}/result?code=course_cancelled")
        assert result_of(result.text) == "cancelled"


async def test_an_unknown_course_is_a_404_page(server):
    async with browser(server, unique("lost")) as client:
        missing = await client.get("/courses/999999999")
        assert missing.status_code == 404 and "<html" in missing.text


async def test_past_the_grab_limit_the_page_says_wait(server, http, db):
    """The page counts against the same per-resident limit as the API (60 in 10 s here)."""
    course = await make_course(http, capacity=3, opens_in_s=3600)
    who = unique("eager")
    answers = await asyncio.gather(*(http.post(f"/v1/courses/{course['id']}/bookings",
                                               headers=resident(who)) for _ in range(61)))
    assert 429 in {answer.status_code for answer in answers}
    async with browser(server, who) as client:
        result = await grab_on_page(client, course["id"])
        assert result_of(result.text) == "rate_limited" and "请稍等片刻再试" in result.text
    assert await active_rows(db, course["id"]) == 0


# --- waitlist ---------------------------------------------------------------------------------

async def test_sold_out_the_button_joins_the_waitlist_with_its_position(server, http):
    course = await make_course(http, capacity=1)
    assert (await grab(http, course["id"], unique("first"))).status_code == 201
    first, second = unique("wait"), unique("wait")
    async with browser(server, first) as one, browser(server, second) as two:
        page = await one.get(f"/courses/{course['id']}")
        assert seats_left(page.text) == 0 and "已满" in page.text
        assert "waitlist" in forms_of(page.text) and "grab" not in forms_of(page.text)

        results = []
        for client in (one, two):
            answer = await submit(client, f"/courses/{course['id']}", "waitlist")
            assert answer.status_code == 303
            results.append(await client.get(answer.headers["location"]))
        assert [result_of(r.text) for r in results] == ["waitlist", "waitlist"]
        assert "候补第 1 位" in results[0].text and "候补第 2 位" in results[1].text

        mine = await two.get("/me/bookings")
        assert 'data-waitlist-position="2"' in mine.text
        api = await http.get("/v1/me/waitlist", headers=resident(second))
        assert [(e["course_id"], e["position"]) for e in api.json()] == [(course["id"], 2)]

        left = await submit(one, "/me/bookings", f"leave-{course['id']}")
        assert left.status_code == 303
        assert 'data-waitlist-position' not in (await one.get("/me/bookings")).text
        assert 'data-waitlist-position="1"' in (await two.get("/me/bookings")).text


async def test_a_grab_of_a_sold_out_course_offers_the_waitlist(server, http, db):
    course = await make_course(http, capacity=1)
    assert (await grab(http, course["id"], unique("quick"))).status_code == 201
    async with browser(server, unique("slow")) as client:
        page = await client.get(f"/courses/{course['id']}")
        form = forms_of(page.text)["waitlist"]
        # A page loaded before the last seat went still posts to grab: it says 已满.
        answer = await client.post(f"/courses/{course['id']}/grab", data=form["fields"])
        assert answer.status_code == 303
        result = await client.get(answer.headers["location"])
        assert result_of(result.text) == "sold_out" and "已满" in result.text
        assert "waitlist" in forms_of(result.text)
    assert await active_rows(db, course["id"]) == 1


# --- a paid course: hold, then the demo payment -----------------------------------------------

async def test_a_hold_asks_for_payment_and_the_demo_payment_confirms_it(server, http, db):
    course = await make_course(http, capacity=2, price_cents=1200, hold_minutes=7)
    who = unique("payer")
    async with browser(server, who) as client:
        page = await client.get(f"/courses/{course['id']}")
        assert "¥12.00" in page.text
        result = await grab_on_page(client, course["id"])
        assert result_of(result.text) == "held"
        assert "请在 7 分钟内付款" in result.text and "付款截止" in result.text
        (booking,) = await api_bookings(who, http)
        assert booking["status"] == "held"

        mine = await client.get("/me/bookings")
        card = booking_card(mine.text, booking["id"])
        assert 'data-status="held"' in card and 'id="pay"' in card and 'class="qr"' not in card

        paid = await submit(client, f"/courses/{course['id']}/result", "pay")
        assert paid.status_code == 303
        assert paid.headers["location"] == f"/courses/{course['id']}/result"
        after = await client.get(paid.headers["location"])
        assert result_of(after.text) == "confirmed"
        (booking,) = await api_bookings(who, http)
        assert booking["status"] == "confirmed"
        card = booking_card((await client.get("/me/bookings")).text, booking["id"])
        assert 'class="qr"' in card
    assert await active_rows(db, course["id"]) == 1


async def test_only_your_own_booking_can_be_paid_or_cancelled(server, http):
    course = await make_course(http, capacity=2, price_cents=500)
    owner = unique("owner")
    assert (await grab(http, course["id"], owner)).status_code == 201
    (booking,) = await api_bookings(owner, http)
    async with browser(server, unique("stranger")) as client:
        await client.get("/me/bookings")
        csrf = client.cookies.get("csrftoken")  # the form's hidden token is the same value
        assert csrf
        for path in (f"/me/bookings/{booking['id']}/pay", f"/me/bookings/{booking['id']}/cancel"):
            answer = await client.post(path, data={"_csrf_token": csrf})
            assert answer.status_code == 404, path
    (booking,) = await api_bookings(owner, http)
    assert booking["status"] == "held"


# --- cancel -----------------------------------------------------------------------------------

async def test_cancel_goes_through_a_confirm_page(server, http, db):
    course = await make_course(http, capacity=2)
    who = unique("changes-mind")
    async with browser(server, who) as client:
        await grab_on_page(client, course["id"])
        (booking,) = await api_bookings(who, http)
        mine = await client.get("/me/bookings")
        confirm_path = f"/me/bookings/{booking['id']}/cancel"
        assert f'href="{confirm_path}"' in booking_card(mine.text, booking["id"])

        confirm = await client.get(confirm_path)
        assert confirm.status_code == 200 and "cancel" in forms_of(confirm.text)
        assert await active_rows(db, course["id"]) == 1  # looking is not cancelling

        answer = await submit(client, confirm_path, "cancel")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/me/bookings")
        (booking,) = await api_bookings(who, http)
        assert booking["status"] == "cancelled"
        card = booking_card((await client.get("/me/bookings")).text, booking["id"])
        assert 'data-status="cancelled"' in card and 'class="qr"' not in card
    assert await active_rows(db, course["id"]) == 0


# --- CSRF -------------------------------------------------------------------------------------

async def test_a_cookie_post_without_the_csrf_token_changes_nothing(server, http, db):
    course = await make_course(http, capacity=2)
    who = unique("victim")
    async with browser(server, who) as client:
        await client.get(f"/courses/{course['id']}")  # the CSRF cookie is set
        assert client.cookies.get("csrftoken")
        attempts = [
            {},  # no token at all
            {"headers": {"Origin": "https://evil.example"}},  # a form on another site
            {"data": {"_csrf_token": "0" * 128}},  # a made-up token
        ]
        for attempt in attempts:
            answer = await client.post(f"/courses/{course['id']}/grab",
                                       data=attempt.get("data", {"x": "1"}),
                                       headers=attempt.get("headers"))
            assert answer.status_code == 403, attempt
            assert "<html" in answer.text
    assert await active_rows(db, course["id"]) == 0
    assert await api_bookings(who, http) == []


# --- the page and the API race for one seat ---------------------------------------------------

async def test_a_page_and_the_api_grabbing_one_seat_at_once_make_one_booking(server, http, db):
    for _ in range(5):
        course = await make_course(http, capacity=1)
        on_page, by_api = unique("page-racer"), unique("api-racer")
        async with browser(server, on_page) as client:
            page = await client.get(f"/courses/{course['id']}")
            form = forms_of(page.text)["grab"]
            posted, api = await asyncio.gather(
                client.post(form["action"], data=form["fields"]),
                grab(http, course["id"], by_api))
            assert posted.status_code == 303
            result = result_of((await client.get(posted.headers["location"])).text)
        assert await active_rows(db, course["id"]) == 1
        if api.status_code == 201:
            assert result == "sold_out"
        else:
            assert api.status_code == 409 and api.json()["code"] == "sold_out"
            assert result == "confirmed"


async def test_one_resident_on_a_page_and_the_api_at_once_gets_one_booking(server, http, db):
    course = await make_course(http, capacity=3)
    who = unique("both-hands")
    async with browser(server, who) as client:
        page = await client.get(f"/courses/{course['id']}")
        form = forms_of(page.text)["grab"]
        posted, api = await asyncio.gather(client.post(form["action"], data=form["fields"]),
                                           grab(http, course["id"], who))
        assert posted.status_code == 303 and api.status_code in (200, 201)
        result = await client.get(posted.headers["location"])
        assert result_of(result.text) == "confirmed"
    assert await active_rows(db, course["id"]) == 1
    assert [b["id"] for b in await api_bookings(who, http)] == [api.json()["id"]]


async def test_a_waitlist_join_on_a_page_is_the_apis(server, http):
    """A place taken through the API is the place the page shows (and joining again on the page
    keeps it)."""
    course = await make_course(http, capacity=1)
    assert (await grab(http, course["id"], unique("holder"))).status_code == 201
    who = unique("patient")
    assert (await join_waitlist(http, course["id"], who)).status_code == 201
    async with browser(server, who) as client:
        answer = await submit(client, f"/courses/{course['id']}", "waitlist")
        result = await client.get(answer.headers["location"])
        assert result_of(result.text) == "waitlist" and "候补第 1 位" in result.text


async def test_without_demo_there_is_no_simulated_payment(http, db, stores):
    """The app in this process (in the test's own event loop) with BOOKING_DEMO off, on the same
    stores: a hold shows no 模拟付款 button, and posting to it anyway is a 404 that pays
    nothing."""
    settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url,
                        secret=SECRET, payment_secret=PAYMENT_SECRET, demo=False)
    course = await make_course(http, capacity=2, price_cents=800)
    who = unique("no-demo")
    assert (await grab(http, course["id"], who)).status_code == 201
    (booking,) = await api_bookings(who, http)
    redis = open_redis(stores.redis_url)
    app = create_app(settings, pool=db, redis=redis, background=False)
    cookies = {TOKEN_COOKIE: mint(SECRET, "resident", who)}
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                 base_url="http://worker",
                                                 cookies=cookies) as client:
        result = await client.get(f"/courses/{course['id']}/result")
        assert result_of(result.text) == "held" and "pay" not in forms_of(result.text)
        mine = await client.get("/me/bookings")
        assert 'id="pay"' not in booking_card(mine.text, booking["id"])
        csrf = client.cookies.get("csrftoken")
        assert csrf
        paid = await client.post(f"/me/bookings/{booking['id']}/pay",
                                 data={"_csrf_token": csrf})
        assert paid.status_code == 404
    await redis.aclose()
    (booking,) = await api_bookings(who, http)
    assert booking["status"] == "held"
