"""The venue's desk pages as a browser without JavaScript uses them, signed in as venue staff by
the cookie `booking_token` holding a `venue` token: the dashboard, publishing a course (checked
through `/v1` and in Postgres), the roster with masked phones and its CSV, and another venue's
roster refused."""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from conftest import (
    OPERATOR,
    SECRET,
    auth,
    grab,
    join_waitlist,
    make_course,
    make_venue,
    unique,
    wait_for,
)
from nojs import page_client, submit

from booking.core.auth import mint

TOKEN_COOKIE = "booking_token"


# --- a browser without JavaScript, signed in as a venue's staff -------------------------------

@asynccontextmanager
async def desk(server: str, venue_id: int | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser without JavaScript signed in as staff of `venue_id` (None: signed out)."""
    token = mint(SECRET, "venue", "staff-x", venue_id=venue_id) if venue_id else None
    async with page_client(server, token) as client:
        yield client


def seats_shown(html: str, course_id: int) -> int | None:
    found = re.search(rf'<span data-seats-left data-course-id="{course_id}">(\d+)</span>', html)
    return int(found.group(1)) if found else None


def row_of(html: str, course_id: int) -> str:
    found = re.search(rf'<tr data-course-id="{course_id}">(.*?)</tr>', html, re.S)
    assert found, html
    return found.group(1)


async def resident_with_phone(db: asyncpg.Pool) -> tuple[str, str]:
    """A resident with a phone on file (as a sign-in makes one): (id, phone)."""
    resident_id, phone = unique("res"), f"138{secrets.randbelow(10**8):08d}"
    await db.execute("INSERT INTO residents (id, phone) VALUES ($1, $2)", resident_id, phone)
    return resident_id, phone


def masked(phone: str) -> str:
    return f"{phone[:3]}****{phone[7:]}"


async def courses_of(db: asyncpg.Pool, venue_id: int) -> int:
    return await db.fetchval("SELECT count(*) FROM courses WHERE venue_id = $1", venue_id)


def publish_form(title: str, **changes: str) -> dict[str, str]:
    return {"title": title, "category": "书法", "teacher": "王老师",
            "description": "从握笔开始。", "starts_at": "2031-05-06T19:00",
            "ends_at": "2031-05-06T21:00", "capacity": "12", "price_yuan": "12.5",
            "sales_open_at": "2031-05-01T20:00", "hold_minutes": "15",
            "cancel_deadline": "", **changes}


# --- the dashboard ----------------------------------------------------------------------------

async def test_the_dashboard_lists_only_its_own_courses_with_live_counts(server, http, db):
    venue = await make_venue(http)
    mine = await make_course(http, capacity=2, venue_id=venue)
    other = await make_course(http, capacity=5)
    assert (await grab(http, mine["id"], unique("a"))).status_code == 201
    booked = await grab(http, mine["id"], unique("b"))
    assert booked.status_code == 201
    assert (await join_waitlist(http, mine["id"], unique("c"))).status_code == 201
    await db.execute("INSERT INTO attendance (booking_id, lesson_date, method, verifier) "
                     "VALUES ($1, current_date, 'qr', 'staff-x')", booked.json()["id"])
    async with desk(server, venue) as client:
        async def sold_out_shown() -> bool:
            return seats_shown((await client.get("/venue")).text, mine["id"]) == 0
        await wait_for(sold_out_shown)
        answer = await client.get("/venue")
    assert answer.status_code == 200
    html = answer.text
    assert mine["title"] in html and other["title"] not in html
    assert seats_shown(html, other["id"]) is None
    assert f'data-live-courses="{mine["id"]}"' in html
    assert '<script src="/static/desk-live.js" defer></script>' in html
    row = row_of(html, mine["id"])
    assert "<td data-waiting>1</td>" in row and "<td data-checkins>1</td>" in row
    assert f'href="/venue/courses/{mine["id"]}/roster"' in row
    assert 'href="/venue/checkin"' in html and 'href="/me/bookings"' not in html
    script = await http.get("/static/desk-live.js")
    assert script.status_code == 200 and "/live?courses=" in script.text


# --- publish a course -------------------------------------------------------------------------

async def test_a_course_published_on_the_form_is_the_one_v1_shows(server, http, db):
    venue = await make_venue(http)
    title = unique("书法入门")
    async with desk(server, venue) as client:
        answer = await submit(client, "/venue/courses/new", "publish-course",
                              **publish_form(title))
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/venue?done=published"
        dashboard = await client.get(answer.headers["location"])
    assert title in dashboard.text and 'id="published"' in dashboard.text
    listed = await http.get("/v1/courses", params={"venue_id": venue})
    (course,) = listed.json()["items"]
    shown = (await http.get(f"/v1/courses/{course['id']}")).json()
    assert shown["title"] == title and shown["venue_id"] == venue
    assert shown["starts_at"].startswith("2031-05-06T11:00:00")  # 19:00 Beijing time
    assert shown["sales_open_at"].startswith("2031-05-01T12:00:00")
    assert (shown["price_cents"], shown["capacity"], shown["hold_minutes"]) == (1250, 12, 15)
    assert shown["cancel_deadline"] is None and shown["seats_left"] == 12


async def test_a_bad_form_writes_nothing_and_says_why_beside_each_field(server, http, db):
    venue = await make_venue(http)
    async with desk(server, venue) as client:
        page = await client.get("/venue/courses/new")
        assert "WGS-84" in page.text and 'id="wgs84-note"' in page.text
        answer = await submit(client, "/venue/courses/new", "publish-course", **publish_form(
            "", ends_at="2031-05-06T18:00", capacity="many", price_yuan="1.234"))
    assert answer.status_code == 400
    for field in ("title", "ends_at", "capacity", "price_yuan"):
        assert f'data-field-error="{field}"' in answer.text, field
    assert 'data-field-error="teacher"' not in answer.text
    assert 'value="many"' in answer.text  # what was typed stays
    assert await courses_of(db, venue) == 0


# --- the roster and its CSV -------------------------------------------------------------------

async def test_the_roster_masks_phones_and_its_csv_is_formula_safe(server, http, db):
    venue = await make_venue(http)
    course = await make_course(http, capacity=2, venue_id=venue, title="=cmd|' /C calc'!A0")
    first, first_phone = await resident_with_phone(db)
    waiting, waiting_phone = await resident_with_phone(db)
    no_phone = unique("=nophone")
    assert (await grab(http, course["id"], first)).status_code == 201
    assert (await grab(http, course["id"], no_phone)).status_code == 201
    assert (await join_waitlist(http, course["id"], waiting)).status_code == 201
    async with desk(server, venue) as client:
        page = await client.get(f"/venue/courses/{course['id']}/roster")
        download = await client.get(f"/venue/courses/{course['id']}/roster.csv")
    assert page.status_code == 200
    html = page.text
    assert masked(first_phone) in html and masked(waiting_phone) in html
    assert first_phone not in html and waiting_phone not in html and no_phone not in html
    assert no_phone[:8] + "…" in html
    assert html.count('data-checked-in="no"') == 2
    assert '<dd id="waiting-count">1</dd>' in html
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(download.content.decode("utf-8-sig"))))
    assert len(rows) == 4  # header, two bookings, one waiting
    cells = [cell for row in rows for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert rows[1][0] == "'=cmd|' /C calc'!A0" and rows[1][3] == masked(first_phone)
    assert rows[2][3] == "'" + no_phone[:8] + "…"
    assert rows[3][3] == masked(waiting_phone) and rows[3][2] == "1"
    assert first_phone not in download.text


async def test_the_v1_twins_answer_the_same_masked_roster(server, http, db):
    venue = await make_venue(http)
    course = await make_course(http, capacity=1, venue_id=venue)
    booked, phone = await resident_with_phone(db)
    waiting, waiting_phone = await resident_with_phone(db)
    grabbed = await grab(http, course["id"], booked)
    assert grabbed.status_code == 201
    assert (await join_waitlist(http, course["id"], waiting)).status_code == 201
    await db.execute("INSERT INTO attendance (booking_id, lesson_date, method, verifier) "
                     "VALUES ($1, current_date, 'code', 'staff-x')", grabbed.json()["id"])
    staff = auth("venue", "staff-x", venue_id=venue)
    roster = await http.get(f"/v1/courses/{course['id']}/roster", headers=staff)
    assert roster.status_code == 200, roster.text
    (entry,) = roster.json()
    assert (entry["phone"], entry["checkins"], entry["status"]) == (masked(phone), 1,
                                                                    "confirmed")
    queue = await http.get(f"/v1/courses/{course['id']}/waitlist", headers=staff)
    assert [(p["position"], p["phone"]) for p in queue.json()] == [(1, masked(waiting_phone))]
    other = auth("venue", "staff-y", venue_id=await make_venue(http))
    for path in ("roster", "waitlist"):
        refused = await http.get(f"/v1/courses/{course['id']}/{path}", headers=other)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        assert (await http.get(f"/v1/courses/{course['id']}/{path}",
                               headers=OPERATOR)).status_code == 200


async def test_another_venues_roster_is_refused(server, http):
    course = await make_course(http, capacity=3)
    mine = await make_venue(http)
    async with desk(server, mine) as client:
        for path in ("roster", "roster.csv"):
            answer = await client.get(f"/venue/courses/{course['id']}/{path}")
            assert answer.status_code == 403, path
            assert 'data-error="forbidden"' in answer.text
            assert course["title"] not in answer.text
        missing = await client.get("/venue/courses/999999999/roster")
        assert missing.status_code == 404


async def test_signed_out_or_as_a_resident_the_desk_sends_to_the_staff_sign_in(server, http):
    course = await make_course(http, capacity=3)
    pages = ["/venue", "/venue/courses/new", f"/venue/courses/{course['id']}/roster",
             f"/venue/courses/{course['id']}/roster.csv"]
    resident_cookie = {TOKEN_COOKIE: mint(SECRET, "resident", unique("r"))}
    async with desk(server, None) as client:
        for path in pages:
            for cookies in ({}, resident_cookie):
                client.cookies.clear()
                client.cookies.update(cookies)
                answer = await client.get(path)
                assert answer.status_code == 303, path
                target = urlsplit(answer.headers["location"])
                assert target.path == "/venue/login"
                # the CSV's sign-in leads back to its roster page
                assert parse_qs(target.query)["next"] == [path.removesuffix(".csv")]
