"""Check-in at the door (`POST /v1/checkins` and the desk's page `/venue/checkin`) and the
attendance it records, against the session's real server, Postgres as the one clock.

A course "with a lesson now" starts a few minutes ago (or within the 60 minutes before) and ends
later; weekly courses are made by setting `courses.lessons` in Postgres."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from conftest import SECRET, auth, cancel, grab, make_course, make_venue, resident, unique
from nojs import page_client

from booking.checkin import checkin_token
from booking.core.auth import mint

BEIJING = timedelta(hours=8)


def staff(venue_id: int, who: str = "staff-x") -> dict[str, str]:
    return auth("venue", who, venue_id=venue_id)


async def course_at(http: httpx.AsyncClient, venue_id: int, starts_in: timedelta,
                    lasts: timedelta = timedelta(hours=2), **extra: Any) -> dict[str, Any]:
    """A course of the venue starting `starts_in` from now (negative: already begun), whose
    bookings may be cancelled until tomorrow."""
    now = datetime.now(UTC)
    extra.setdefault("cancel_deadline", (now + timedelta(days=1)).isoformat())
    starts = now + starts_in
    return await make_course(http, capacity=20, venue_id=venue_id,
                             starts_at=starts.isoformat(), ends_at=(starts + lasts).isoformat(),
                             sales_open_at=(min(now, starts) - timedelta(minutes=1)).isoformat(),
                             **extra)


async def booked(http: httpx.AsyncClient, course_id: int) -> dict[str, Any]:
    """A resident's grab of the course, with its check-in token and code (as /me/bookings
    shows them)."""
    who = unique("resident")
    grabbed = await grab(http, course_id, who)
    assert grabbed.status_code == 201, grabbed.text
    booking = grabbed.json()
    shown = await http.get(f"/v1/bookings/{booking['id']}/checkin", headers=resident(who))
    assert shown.status_code == 200, shown.text
    return {**booking, **shown.json(), "who": who}


async def lesson_now(http: httpx.AsyncClient) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(venue id, course, booking) of a course whose lesson began 5 minutes ago."""
    venue_id = await make_venue(http)
    course = await course_at(http, venue_id, timedelta(minutes=-5))
    return venue_id, course, await booked(http, course["id"])


def beijing_date(moment: str) -> str:
    return (datetime.fromisoformat(moment) + BEIJING).date().isoformat()


async def check_in(http: httpx.AsyncClient, venue_id: int, who: str = "staff-x",
                   **body: str) -> httpx.Response:
    return await http.post("/v1/checkins", json=body, headers=staff(venue_id, who))


async def rows_of(db: Any, booking_id: str) -> list[Any]:
    return await db.fetch("SELECT lesson_date, checked_at, method, verifier FROM attendance "
                          "WHERE booking_id = $1", booking_id)


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.text


# --- the API ----------------------------------------------------------------------------------

async def test_a_token_checks_in_once_and_again_answers_the_first(server, http, db):
    venue_id, course, booking = await lesson_now(http)
    first = await check_in(http, venue_id, token=booking["token"])
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["first"] is True
    assert {key: body[key] for key in ("booking_id", "course_id", "course_title", "resident_id",
                                       "lesson_date", "method")} == {
        "booking_id": booking["id"], "course_id": course["id"], "course_title": course["title"],
        "resident_id": booking["who"], "lesson_date": beijing_date(course["starts_at"]),
        "method": "qr"}

    again = await check_in(http, venue_id, token=booking["token"])
    assert again.status_code == 200, again.text
    assert again.json() == {**body, "first": False}

    code = booking["code"].lower()
    typed = await check_in(http, venue_id, code=f"{code[:4]}-{code[4:]}")
    assert typed.status_code == 200, typed.text
    assert typed.json() == {**body, "first": False}

    (row,) = await rows_of(db, booking["id"])
    assert (row["method"], row["verifier"]) == ("qr", "staff-x")
    assert row["lesson_date"].isoformat() == body["lesson_date"]
    assert datetime.fromisoformat(body["checked_at"]) == row["checked_at"]


async def test_a_typed_code_checks_in_among_the_lesson_at_hand(server, http, db):
    venue_id, course, booking = await lesson_now(http)
    others = [await booked(http, course["id"]) for _ in range(3)]
    answer = await check_in(http, venue_id, "staff-y", code=booking["code"])
    assert answer.status_code == 201, answer.text
    assert (answer.json()["booking_id"], answer.json()["method"]) == (booking["id"], "code")
    (row,) = await rows_of(db, booking["id"])
    assert (row["method"], row["verifier"]) == ("code", "staff-y")
    for other in others:  # nobody else was checked in by it
        assert await rows_of(db, other["id"]) == []


async def test_forged_edited_or_unknown_tokens_and_codes_are_refused(server, http, db):
    venue_id, _, booking = await lesson_now(http)
    token = booking["token"]
    edited = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for bad in (edited, token[:-1], "not a token at all", checkin_token("other-secret-x" * 3,
                                                                         booking["id"])):
        refused(await check_in(http, venue_id, token=bad), 400, "invalid_token")
    wrong_code = "00000000" if booking["code"] != "00000000" else "11111111"
    refused(await check_in(http, venue_id, code=wrong_code), 400, "invalid_token")
    assert await rows_of(db, booking["id"]) == []


async def test_a_body_needs_exactly_one_of_token_and_code(server, http):
    venue_id, _, booking = await lesson_now(http)
    for body in ({}, {"token": booking["token"], "code": booking["code"]},
                 {"token": booking["token"], "extra": 1}):
        answer = await http.post("/v1/checkins", json=body, headers=staff(venue_id))
        assert answer.status_code == 400, (body, answer.text)


async def test_only_venue_staff_check_in(server, http):
    _, _, booking = await lesson_now(http)
    answer = await http.post("/v1/checkins", json={"token": booking["token"]})
    assert answer.status_code == 401, answer.text
    answer = await http.post("/v1/checkins", json={"token": booking["token"]},
                             headers=resident(booking["who"]))
    assert answer.status_code == 403, answer.text


async def test_another_venues_staff_cannot_check_in_its_bookings(server, http, db):
    _, _, booking = await lesson_now(http)
    other_venue, _, _ = await lesson_now(http)  # that venue has a lesson at hand too
    refused(await check_in(http, other_venue, token=booking["token"]), 403, "wrong_venue")
    # a code names no booking: at another venue it is simply not one of theirs
    refused(await check_in(http, other_venue, code=booking["code"]), 400, "invalid_token")
    assert await rows_of(db, booking["id"]) == []


async def test_check_in_opens_60_minutes_before_a_lesson_and_closes_at_its_end(server, http):
    venue_id = await make_venue(http)
    soon = await course_at(http, venue_id, timedelta(minutes=45))
    answer = await check_in(http, venue_id, token=(await booked(http, soon["id"]))["token"])
    assert answer.status_code == 201, answer.text
    for starts_in, lasts in ((timedelta(minutes=75), timedelta(hours=2)),
                             (timedelta(hours=-3), timedelta(hours=2))):
        course = await course_at(http, venue_id, starts_in, lasts)
        booking = await booked(http, course["id"])
        refused(await check_in(http, venue_id, token=booking["token"]), 409, "no_lesson_now")
        # and its code is not among the lesson at hand's
        refused(await check_in(http, venue_id, code=booking["code"]), 400, "invalid_token")


async def test_only_a_confirmed_booking_checks_in(server, http, db):
    venue_id, _, booking = await lesson_now(http)
    assert (await cancel(http, booking["id"], booking["who"])).status_code == 200
    refused(await check_in(http, venue_id, token=booking["token"]), 409, "booking_not_active")
    paid = await course_at(http, venue_id, timedelta(minutes=-5), price_cents=500)
    who = unique("payer")
    held = await grab(http, paid["id"], who)
    assert held.json()["status"] == "held", held.text
    token = checkin_token(SECRET, held.json()["id"])
    refused(await check_in(http, venue_id, token=token), 409, "booking_not_active")
    assert await rows_of(db, booking["id"]) == [] and await rows_of(db, held.json()["id"]) == []


async def test_simultaneous_check_ins_make_one_row(server, http, db):
    venue_id, _, booking = await lesson_now(http)
    answers = await asyncio.gather(*(check_in(http, venue_id, token=booking["token"])
                                     for _ in range(8)),
                                   *(check_in(http, venue_id, code=booking["code"])
                                     for _ in range(4)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 11 + [201], [answer.text for answer in answers]
    assert len({answer.json()["checked_at"] for answer in answers}) == 1
    assert len({answer.json()["method"] for answer in answers}) == 1
    assert len(await rows_of(db, booking["id"])) == 1


async def test_a_weekly_course_has_a_lesson_each_week_up_to_its_count(server, http, db):
    venue_id = await make_venue(http)
    week_ago = timedelta(days=-7, minutes=-5)
    twice = await course_at(http, venue_id, week_ago)
    once = await course_at(http, venue_id, week_ago)
    await db.execute("UPDATE courses SET lessons = 2 WHERE id = $1", twice["id"])
    second = await check_in(http, venue_id, token=(await booked(http, twice["id"]))["token"])
    assert second.status_code == 201, second.text
    started = datetime.fromisoformat(twice["starts_at"]) + timedelta(days=7)
    assert second.json()["lesson_date"] == (started + BEIJING).date().isoformat()
    assert datetime.fromisoformat(second.json()["lesson_starts_at"]) == started
    refused(await check_in(http, venue_id, token=(await booked(http, once["id"]))["token"]),
            409, "no_lesson_now")


async def test_each_lesson_of_a_booking_is_its_own_attendance(server, http, db):
    venue_id = await make_venue(http)
    course = await course_at(http, venue_id, timedelta(minutes=-5))
    await db.execute("UPDATE courses SET lessons = 3 WHERE id = $1", course["id"])
    booking = await booked(http, course["id"])
    assert (await check_in(http, venue_id, token=booking["token"])).status_code == 201
    # a week passes: move the course and that check-in back a week, so lesson 2 is at hand
    await db.execute("UPDATE courses SET starts_at = starts_at - interval '7 days', "
                     "ends_at = ends_at - interval '7 days', "
                     "sales_open_at = sales_open_at - interval '7 days', "
                     "cancel_deadline = cancel_deadline - interval '7 days' WHERE id = $1",
                     course["id"])
    await db.execute("UPDATE attendance SET lesson_date = lesson_date - 7, "
                     "checked_at = checked_at - interval '7 days' WHERE booking_id = $1",
                     booking["id"])
    answer = await check_in(http, venue_id, token=booking["token"])
    assert answer.status_code == 201, answer.text
    dates = sorted(row["lesson_date"] for row in await rows_of(db, booking["id"]))
    assert len(dates) == 2 and dates[1] - dates[0] == timedelta(days=7)


# --- the desk's page --------------------------------------------------------------------------

@asynccontextmanager
async def desk(server: str, venue_id: int | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser without JavaScript signed in as staff of `venue_id` (None: signed out)."""
    token = mint(SECRET, "venue", "staff-desk", venue_id=venue_id) if venue_id else None
    async with page_client(server, token) as client:
        yield client


async def type_in(client: httpx.AsyncClient, typed: str) -> httpx.Response:
    """Load the desk, type (or scan) into its one field and send it, then follow the 303."""
    shown = await client.get("/venue/checkin")
    assert shown.status_code == 200, shown.text
    assert re.search(r'<input id="token" name="token"[^>]*autofocus', shown.text)
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', shown.text)
    assert csrf, shown.text
    answer = await client.post("/venue/checkin", data={"_csrf_token": csrf.group(1),
                                                       "token": typed})
    assert answer.status_code == 303, answer.text
    assert urlsplit(answer.headers["location"]).path == "/venue/checkin"
    result = await client.get(answer.headers["location"])
    assert result.status_code == 200, result.text
    assert 'id="checkin"' in result.text  # the form, ready for the next person
    return result


def checkin_of(html: str) -> str:
    found = re.search(r'data-checkin="([a-z_]+)"', html)
    assert found, html
    return found.group(1)


async def test_the_desk_checks_in_by_scan_then_says_already_then_refuses(server, http, db):
    venue_id, course, booking = await lesson_now(http)
    async with desk(server, venue_id) as client:
        first = await type_in(client, booking["token"] + "\r\n")
        assert checkin_of(first.text) == "checked_in"
        assert "已签到" in first.text and course["title"] in first.text
        again = await type_in(client, booking["code"].lower())
        assert checkin_of(again.text) == "already_checked_in"
        edited = booking["token"][:-3] + ("AAA" if booking["token"][-3:] != "AAA" else "BBB")
        bad = await type_in(client, edited)
        assert checkin_of(bad.text) == "refused"
        assert 'data-reason="invalid_token"' in bad.text
    (row,) = await rows_of(db, booking["id"])
    assert (row["method"], row["verifier"]) == ("qr", "staff-desk")


async def test_the_desk_says_why_it_refuses(server, http):
    venue_id, course, booking = await lesson_now(http)
    later = await course_at(http, venue_id, timedelta(hours=5))
    not_now = await booked(http, later["id"])
    cancelled = await booked(http, course["id"])
    assert (await cancel(http, cancelled["id"], cancelled["who"])).status_code == 200
    other_venue = await make_venue(http)
    async with desk(server, venue_id) as client:
        for typed, reason in ((not_now["token"], "no_lesson_now"),
                              (cancelled["token"], "booking_not_active")):
            shown = await type_in(client, typed)
            assert checkin_of(shown.text) == "refused"
            assert f'data-reason="{reason}"' in shown.text
    async with desk(server, other_venue) as client:
        shown = await type_in(client, booking["token"])
        assert 'data-reason="wrong_venue"' in shown.text


async def test_the_desk_needs_staff_and_a_typed_value(server, http):
    venue_id, _, booking = await lesson_now(http)
    async with desk(server, None) as client:
        answer = await client.get("/venue/checkin")
        assert answer.status_code == 303
        assert urlsplit(answer.headers["location"]).path == "/venue/login"
        assert parse_qs(urlsplit(answer.headers["location"]).query)["next"] == ["/venue/checkin"]
    async with desk(server, venue_id) as client:
        shown = await client.get("/venue/checkin")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', shown.text)
        assert csrf
        empty = await client.post("/venue/checkin", data={"_csrf_token": csrf.group(1),
                                                          "token": "  "})
        assert empty.status_code == 400
        assert 'class="field-error"' in empty.text
        forged = await client.post("/venue/checkin", data={"token": booking["token"]})
        assert forged.status_code == 403  # no CSRF token: nothing checked in
        # an answer's address naming no check-in of this venue shows nothing
        other = await client.get("/venue/checkin", params={
            "result": "checked_in", "booking": booking["id"], "date": date.today().isoformat()})
        assert "data-checkin" not in other.text
