"""API v1 as a resident, a venue and an operator see it: answers, codes and refusals."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from conftest import (
    OPERATOR,
    SECRET,
    active_rows,
    auth,
    course_body,
    grab,
    make_course,
    make_venue,
    resident,
    run_cli,
    service_env,
    unique,
)

ONE_MS = timedelta(milliseconds=1)


async def test_grab_before_sales_open_says_when(http):
    course = await make_course(http, capacity=5, opens_in_s=3600)
    sent = time.time()
    answer = await grab(http, course["id"], unique("early-bird"))
    received = time.time()
    assert answer.status_code == 409
    assert answer.json()["code"] == "not_open"
    opens_at = datetime.fromisoformat(answer.json()["opens_at"])
    assert abs(opens_at - datetime.fromisoformat(course["sales_open_at"])) <= ONE_MS
    # Seconds until the opening, as the server counted them between our sending and receiving.
    opens = opens_at.timestamp()
    assert math.ceil(opens - received) <= int(answer.headers["retry-after"]) <= math.ceil(
        opens - sent)


async def grab_until_open(http, course_id: int, who: str) -> list[tuple[httpx.Response, float]]:
    """Grab until the answer is no longer `not_open`, waiting each time until the opening the
    server named has passed (polling from then on); every answer with when it arrived."""
    answers: list[tuple[httpx.Response, float]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = await grab(http, course_id, who)
        answers.append((answer, time.time()))
        if answer.status_code != 409 or answer.json()["code"] != "not_open":
            break
        opens = datetime.fromisoformat(answer.json()["opens_at"]).timestamp()
        await asyncio.sleep(min(max(opens - time.time(), 0.05), 1.0))
    return answers


async def test_sales_open_on_the_servers_clock(http):
    course = await make_course(http, capacity=5, opens_in_s=3600)
    who = unique("patient")
    assert (await grab(http, course["id"], who)).json()["code"] == "not_open"
    soon = datetime.now(UTC) + timedelta(seconds=2)
    moved = await http.patch(f"/v1/courses/{course['id']}",
                             json={"sales_open_at": soon.isoformat()}, headers=OPERATOR)
    assert moved.status_code == 200, moved.text

    *waited, (opened, opened_at) = await grab_until_open(http, course["id"], who)

    assert opened.status_code == 201, opened.text
    for answer, received in waited:  # refused only before the (moved) opening
        assert answer.json()["code"] == "not_open"
        opens_at = datetime.fromisoformat(answer.json()["opens_at"])
        assert abs(opens_at - soon) <= ONE_MS
        assert int(answer.headers["retry-after"]) >= max(1, math.ceil(
            opens_at.timestamp() - received))
    assert opened_at >= soon.timestamp() - ONE_MS.total_seconds()  # and taken only after it


async def test_unknown_course_is_404(http):
    answer = await grab(http, 987654321, unique("lost"))
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


async def test_cancelled_course_refuses_grabs_and_frees_its_bookings(http, db):
    course = await make_course(http, capacity=5)
    await grab(http, course["id"], unique("booked"))
    cancelled = await http.patch(f"/v1/courses/{course['id']}", json={"status": "cancelled"},
                                 headers=OPERATOR)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    answer = await grab(http, course["id"], unique("hopeful"))
    assert answer.status_code == 409 and answer.json()["code"] == "course_cancelled"
    assert await active_rows(db, course["id"]) == 0


async def test_capacity_change_never_below_bookings_and_added_seats_grabbable(http, db):
    course = await make_course(http, capacity=2)
    for _ in range(2):
        assert (await grab(http, course["id"], unique("r"))).status_code == 201
    url = f"/v1/courses/{course['id']}"

    too_small = await http.patch(url, json={"capacity": 1}, headers=OPERATOR)
    bigger = await http.patch(url, json={"capacity": 3}, headers=OPERATOR)

    assert too_small.status_code == 409 and too_small.json()["code"] == "capacity_below_bookings"
    assert bigger.status_code == 200 and bigger.json()["seats_left"] == 1
    assert (await grab(http, course["id"], unique("newcomer"))).status_code == 201
    assert (await grab(http, course["id"], unique("toolate"))).json()["code"] == "sold_out"
    assert await active_rows(db, course["id"]) == 3


async def test_moving_the_opening_applies_at_once(http):
    course = await make_course(http, capacity=2, opens_in_s=3600)
    url = f"/v1/courses/{course['id']}"
    moved = await http.patch(url, json={"sales_open_at": "2020-01-01T00:00:00Z"},
                             headers=OPERATOR)
    assert moved.status_code == 200
    assert (await grab(http, course["id"], unique("r"))).status_code == 201


async def test_course_list_filters_and_pages(http):
    venue = await make_venue(http, district=unique("district"))
    full = await make_course(http, capacity=1, venue_id=venue, category="tea")
    free = await make_course(http, capacity=3, venue_id=venue, category="tea")
    await make_course(http, capacity=3, venue_id=venue, category="guitar")
    await grab(http, full["id"], unique("r"))

    tea = (await http.get("/v1/courses", params={"venue_id": venue, "category": "tea"})).json()
    open_ = (await http.get("/v1/courses", params={"venue_id": venue, "available": "true"}))
    page = (await http.get("/v1/courses", params={"venue_id": venue, "limit": 2})).json()

    assert {c["id"] for c in tea["items"]} == {full["id"], free["id"]}
    assert {c["id"]: c["seats_left"] for c in tea["items"]} == {full["id"]: 0, free["id"]: 3}
    assert full["id"] not in {c["id"] for c in open_.json()["items"]}
    assert len(open_.json()["items"]) == 2
    assert len(page["items"]) == 2 and page["next_offset"] == 2
    rest = (await http.get("/v1/courses", params={"venue_id": venue, "offset": 2})).json()
    assert len(rest["items"]) == 1 and rest["next_offset"] is None


async def test_rosters_and_my_bookings(http):
    venue = await make_venue(http)
    course = await make_course(http, capacity=5, venue_id=venue)
    who = unique("student")
    booking = (await grab(http, course["id"], who)).json()

    roster = await http.get(f"/v1/courses/{course['id']}/bookings",
                            headers=auth("venue", "v", venue_id=venue))
    mine = await http.get("/v1/me/bookings", headers=resident(who))

    assert roster.status_code == 200 and [b["id"] for b in roster.json()] == [booking["id"]]
    assert mine.json() == [booking]


# --- authorisation -------------------------------------------------------------------------

async def test_no_token_is_401(http):
    course = await make_course(http, capacity=1)
    answer = await http.post(f"/v1/courses/{course['id']}/bookings")
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"


@pytest.mark.parametrize("token", [
    jwt.encode({"sub": "x", "role": "resident"}, "another-secret-of-thirty-two-bytes!!",
               algorithm="HS256"),
    jwt.encode({"sub": "x", "role": "resident"}, None, algorithm="none"),
    jwt.encode({"sub": "x", "role": "resident", "exp": 1}, SECRET, algorithm="HS256"),
    jwt.encode({"role": "resident"}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "x", "role": "king"}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "nul\u0000", "role": "resident"}, SECRET, algorithm="HS256"),
    "not-a-token",
])
async def test_bad_tokens_are_401(http, token):
    answer = await http.get("/v1/me/bookings", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"


async def test_resident_cannot_cancel_anothers_booking(http, db):
    course = await make_course(http, capacity=2)
    owner = unique("owner")
    booking = (await grab(http, course["id"], owner)).json()
    answer = await http.delete(f"/v1/bookings/{booking['id']}", headers=resident(unique("thief")))
    assert answer.status_code in (403, 404)
    assert await active_rows(db, course["id"]) == 1


async def test_venue_cannot_change_another_venues_course(http):
    mine, theirs = await make_venue(http), await make_venue(http)
    course = await make_course(http, capacity=2, venue_id=theirs)
    answer = await http.patch(f"/v1/courses/{course['id']}", json={"capacity": 9},
                              headers=auth("venue", "v", venue_id=mine))
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
    roster = await http.get(f"/v1/courses/{course['id']}/bookings",
                            headers=auth("venue", "v", venue_id=mine))
    assert roster.status_code == 403


async def test_venue_publishes_for_itself_and_residents_cannot_publish(http):
    venue = await make_venue(http)
    as_venue = await http.post("/v1/courses", json=course_body(venue, 5),
                               headers=auth("venue", "v", venue_id=venue))
    as_resident = await http.post("/v1/courses", json=course_body(venue, 5),
                                  headers=resident("r"))
    assert as_venue.status_code == 201 and as_venue.json()["venue_id"] == venue
    assert as_resident.status_code == 403


async def test_operators_only_create_venues(http):
    body = {"name": "x", "district": "d", "address": "a", "lat": 1, "lon": 2}
    assert (await http.post("/v1/venues", json=body, headers=resident("r"))).status_code == 403


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"capacity": -1}, {"capacity": 0}, {"capacity": 10**12}, {"capacity": "ten"},
    {"price_cents": -5}, {"title": ""}, {"starts_at": "tomorrow"},
    {"starts_at": "2027-01-01T10:00:00"},  # no time zone
    {"surprise": True}, {"venue_id": -3}, {"title": "nul\u0000byte"},
])
async def test_bad_course_bodies_are_400_and_write_nothing(http, db, change):
    venue = await make_venue(http)
    before = await db.fetchval("SELECT count(*) FROM courses WHERE venue_id = $1", venue)
    answer = await http.post("/v1/courses", json={**course_body(venue, 5), **change},
                             headers=OPERATOR)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid" and answer.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM courses WHERE venue_id = $1", venue) == before


async def test_inconsistent_times_are_400(http):
    venue = await make_venue(http)
    body = course_body(venue, 5)
    ends_first = {**body, "ends_at": body["starts_at"]}
    late_sale = {**body, "sales_open_at": "2099-01-01T00:00:00Z"}
    for bad in (ends_first, late_sale):
        answer = await http.post("/v1/courses", json=bad, headers=OPERATOR)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid"


async def test_unknown_venue_is_404(http):
    answer = await http.post("/v1/courses", json=course_body(10**15, 5), headers=OPERATOR)
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'"text"', b"", '{"title": "\u00e9"'.encode(), b"\xff\xfe",
])
async def test_malformed_json_is_400(http, body):
    answer = await http.post("/v1/courses", content=body, headers=OPERATOR)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/courses/abc"), ("GET", "/v1/courses/-1"),
    ("GET", "/v1/courses/99999999999999999999"),
    ("POST", "/v1/courses/0/bookings"), ("DELETE", "/v1/bookings/not-a-uuid"),
    ("GET", "/v1/courses?available=maybe"), ("GET", "/v1/courses?limit=100000"),
    ("GET", "/v1/courses?sort=price"), ("GET", "/nowhere"), ("GET", "/v1/courses?district=%00"),
])
async def test_bad_ids_and_queries_are_4xx_json(http, method, path):
    answer = await http.request(method, path, headers=resident("r"))
    assert 400 <= answer.status_code < 500
    assert answer.json()["code"] and answer.json()["detail"]


async def test_unknown_booking_is_404(http):
    answer = await http.delete(f"/v1/bookings/{uuid.uuid4()}", headers=resident("r"))
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


async def test_oversized_body_is_413(http):
    answer = await http.post("/v1/venues", content=b"{" + b" " * 200_000 + b"}",
                             headers={**OPERATOR, "content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "body_too_large"


async def test_health_ready_and_openapi(http):
    assert (await http.get("/health")).json() == {"status": "ok"}
    assert (await http.get("/ready")).status_code == 200
    schema = (await http.get("/schema/openapi.json")).json()
    assert "/v1/courses/{course_id}/bookings" in schema["paths"]


# --- command line ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "says"), [
    ("BOOKING_PORT", "eighty", "BOOKING_PORT"),
    ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
    ("BOOKING_SECRET", "short", "BOOKING_SECRET"),
])
def test_invalid_configuration_fails_with_one_sentence(stores, tmp_path, name, value, says):
    result = run_cli(service_env(stores, tmp_path, **{name: value}), "serve")
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_token_command_prints_a_verifiable_token(stores, tmp_path):
    result = run_cli(service_env(stores, tmp_path), "token", "venue", "7")
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["role"] == "venue" and claims["venue_id"] == 7


async def test_request_id_is_echoed_or_made(http):
    mine = await http.get("/health", headers={"X-Request-Id": "r17.2"})
    made = await http.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert mine.headers["x-request-id"] == "r17.2"
    assert len(made.headers["x-request-id"]) == 32


async def test_metrics_count_grabs_by_outcome_and_show_seats_left(http):
    course = await make_course(http, capacity=1)
    await grab(http, course["id"], unique("m"))
    await grab(http, course["id"], unique("m"))
    text = (await http.get("/metrics")).text
    assert 'booking_grabs_total{outcome="taken"}' in text
    assert 'booking_grabs_total{outcome="sold_out"}' in text
    assert f'booking_seats_left{{course_id="{course["id"]}"}} 0' in text
    assert 'route="/v1/courses/{course_id}/bookings"' in text
    assert "booking_commit_batch_rows_bucket" in text


async def test_unicode_in_every_string_comes_back_as_sent(http):
    # CJK, emoji, Arabic, astral, ZWJ; unique, so that the district lists this course alone
    # on a database kept from earlier runs
    text = f"书法 ✍️ كتابة \U0001d518\U0001d52b \u200d {unique('u')}"
    venue = await http.post("/v1/venues", headers=OPERATOR, json={
        "name": text, "district": text, "address": text, "lat": 0, "lon": 0})
    assert venue.status_code == 201 and venue.json()["name"] == text
    body = course_body(venue.json()["id"], 3, title=text, category=text, teacher=text,
                       description=text)
    course = await http.post("/v1/courses", json=body, headers=OPERATOR)
    assert course.status_code == 201
    page = (await http.get(f"/v1/courses/{course.json()['id']}")).json()
    assert all(page[field] == text for field in ("title", "category", "teacher", "description",
                                                 "district"))
    listed = (await http.get("/v1/courses", params={"district": text})).json()["items"]
    assert [c["id"] for c in listed] == [course.json()["id"]]
    booked = await grab(http, course.json()["id"], "居民-" + text)
    assert booked.status_code == 201 and booked.json()["resident_id"] == "居民-" + text


async def test_a_course_has_weekly_lessons_and_a_code_unique_within_its_venue(http):
    venue_id = await make_venue(http)
    code = unique("A")[:40]
    course = await make_course(http, 5, venue_id=venue_id, lessons=12, code=code)
    assert (course["lessons"], course["code"]) == (12, code)
    again = await http.post("/v1/courses", json=course_body(venue_id, 5, code=code),
                            headers=OPERATOR)
    assert (again.status_code, again.json()["code"]) == (409, "code_taken")
    elsewhere = await make_course(http, 5, code=code)  # another venue may use the same code
    assert elsewhere["code"] == code
    for lessons in (0, 53):
        bad = await http.post("/v1/courses", json=course_body(venue_id, 5, lessons=lessons),
                              headers=OPERATOR)
        assert bad.status_code == 400
    patched = await http.patch(f"/v1/courses/{course['id']}", json={"lessons": 2},
                               headers=OPERATOR)
    assert patched.json()["lessons"] == 2
