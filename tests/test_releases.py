"""Releases as an operator makes them and anyone reads them: `POST /v1/releases` in each mode,
its defaults and computed times, the sealed beacon, and every refusal (which writes nothing);
a course in a release and what a venue may no longer change of it; the token's tier claim."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import OPERATOR, SECRET, auth, grab, make_course, make_venue, resident, unique

from booking.core.auth import TokenVerifier, mint
from booking.core.errors import Unauthorized
from booking.releases.service import Release, Tier

BEACON = "4 17 23 31 38 42 / sealed 2026-08-01"
HOUR = timedelta(hours=1)


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def release_body(mode: str, course_ids: list[int], **extra: Any) -> dict[str, Any]:
    """A release opening in an hour, in a term of its own; draw modes get a beacon and a
    lottery closes a day after it opens."""
    opens_at = datetime.now(UTC) + HOUR
    body: dict[str, Any] = {"title": unique("release"), "mode": mode, "course_ids": course_ids,
                            "term": unique("term"), "opens_at": opens_at.isoformat()}
    if mode != "fcfs":
        body["beacon"] = BEACON
    if mode == "lottery":
        body["closes_at"] = (opens_at + timedelta(days=1)).isoformat()
    return {**body, **extra}


async def create(http: httpx.AsyncClient, body: dict[str, Any],
                 headers: dict[str, str] = OPERATOR) -> httpx.Response:
    return await http.post("/v1/releases", json=body, headers=headers)


async def courses(http: httpx.AsyncClient, n: int, **extra: Any) -> list[dict[str, Any]]:
    venue_id = await make_venue(http)
    return [await make_course(http, 5, venue_id=venue_id, **extra) for _ in range(n)]


async def snapshot(db: asyncpg.Pool, course_ids: list[int],
                   term: str) -> tuple[list[tuple[Any, ...]], int]:
    """What a refused creation must leave as it was: each course's release and opening, and
    the term's releases."""
    rows = await db.fetch("SELECT id, release_id, sales_open_at FROM courses "
                          "WHERE id = ANY($1::bigint[]) ORDER BY id", course_ids)
    count = await db.fetchval("SELECT count(*) FROM releases WHERE term = $1", term)
    return [tuple(row) for row in rows], count


async def refused(http: httpx.AsyncClient, db: asyncpg.Pool, body: dict[str, Any],
                  status: int, code: str) -> dict[str, Any]:
    """POST the body, expect the refusal, and check that nothing was written."""
    known = [course_id for course_id in body["course_ids"] if course_id < 2**63]
    before = await snapshot(db, known, body["term"])
    answer = await create(http, body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["detail"]
    assert await snapshot(db, known, body["term"]) == before
    return answer.json()


# --- each mode --------------------------------------------------------------------------------

async def test_an_fcfs_release_opens_its_courses_at_its_opening(http, db):
    first, second = await courses(http, 2)
    senior_at = datetime.now(UTC) + HOUR / 2
    body = release_body("fcfs", [second["id"], first["id"]], term_cap=2,
                        tiers=[{"name": "senior", "opens_at": senior_at.isoformat()}])

    answer = await create(http, body)

    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert release["id"] >= 1
    assert release["title"] == body["title"] and release["mode"] == "fcfs"
    assert release["course_ids"] == sorted([first["id"], second["id"]])
    assert (release["term"], release["term_cap"]) == (body["term"], 2)
    assert at(release["opens_at"]) == at(body["opens_at"])
    for field in ("window_s", "closes_at", "claim_hold_s", "general_sale_at", "max_wishes",
                  "beacon_commitment", "beacon"):
        assert release[field] is None, field
    assert [(t["name"], at(t["opens_at"])) for t in release["tiers"]] == [("senior", senior_at)]
    assert release["state"] == "scheduled"
    public = await http.get(f"/v1/releases/{release['id']}")
    assert public.status_code == 200 and public.json() == release
    for course in (first, second):
        shown = (await http.get(f"/v1/courses/{course['id']}")).json()
        assert shown["release_id"] == release["id"]
        # the gate opens with the earliest tier; everyone else is told their own opening
        assert at(shown["sales_open_at"]) == senior_at
    listed = await http.get("/v1/courses", params={"venue_id": first["venue_id"]})
    assert {c["id"]: c["release_id"] for c in listed.json()["items"]} == {
        first["id"]: release["id"], second["id"]: release["id"]}


async def test_an_fcfs_release_past_its_opening_is_open(http):
    (course,) = await courses(http, 1)
    body = release_body("fcfs", [course["id"]],
                        opens_at=(datetime.now(UTC) - HOUR).isoformat())
    answer = await create(http, body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "open"


async def test_a_window_release_takes_its_defaults_and_keeps_its_courses_closed(http):
    first, second = await courses(http, 2)
    body = release_body("window", [first["id"], second["id"]])

    answer = await create(http, body)

    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert (release["window_s"], release["max_wishes"]) == (120, 5)
    assert at(release["closes_at"]) == at(body["opens_at"]) + timedelta(seconds=120)
    assert release["claim_hold_s"] is None and release["general_sale_at"] is None
    assert release["term_cap"] is None and release["tiers"] == []
    assert release["beacon_commitment"] == hashlib.sha256(BEACON.encode()).hexdigest()
    assert release["beacon"] is None and release["state"] == "scheduled"
    for course in (first, second):  # closed until the draw moves the opening
        shown = (await http.get(f"/v1/courses/{course['id']}")).json()
        assert shown["release_id"] == release["id"]
        assert at(shown["sales_open_at"]) == at(course["starts_at"])


async def test_a_window_release_takes_its_own_length_and_wishes(http):
    (course,) = await courses(http, 1)
    body = release_body("window", [course["id"]], window_s=30, max_wishes=3, term_cap=1)
    answer = await create(http, body)
    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert (release["window_s"], release["max_wishes"], release["term_cap"]) == (30, 3, 1)
    assert at(release["closes_at"]) == at(body["opens_at"]) + timedelta(seconds=30)


async def test_a_lottery_release_seals_its_beacon_while_entries_are_open(http):
    (course,) = await courses(http, 1)
    opens_at = datetime.now(UTC) - HOUR
    closes_at = datetime.now(UTC) + HOUR
    general_sale_at = closes_at + HOUR
    body = release_body("lottery", [course["id"]], opens_at=opens_at.isoformat(),
                        closes_at=closes_at.isoformat(),
                        general_sale_at=general_sale_at.isoformat())

    answer = await create(http, body)

    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert (release["claim_hold_s"], release["max_wishes"], release["window_s"]) == (
        172_800, 5, None)
    assert at(release["closes_at"]) == closes_at
    assert at(release["general_sale_at"]) == general_sale_at
    assert release["state"] == "open"
    assert release["beacon"] is None
    assert release["beacon_commitment"] == hashlib.sha256(BEACON.encode()).hexdigest()
    public = (await http.get(f"/v1/releases/{release['id']}")).json()
    assert public["beacon"] is None and "sealed" not in str(public)


async def test_a_closed_lottery_shows_its_beacon(http):
    (course,) = await courses(http, 1)
    beacon = "数字 0193 8841 2207 · 公开抽取"
    body = release_body("lottery", [course["id"]], beacon=beacon, claim_hold_s=3600,
                        max_wishes=2,
                        opens_at=(datetime.now(UTC) - 2 * HOUR).isoformat(),
                        closes_at=(datetime.now(UTC) - HOUR).isoformat())

    answer = await create(http, body)

    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert (release["claim_hold_s"], release["max_wishes"]) == (3600, 2)
    assert release["state"] in ("closed", "drawn")
    assert release["beacon"] == beacon
    assert release["beacon_commitment"] == hashlib.sha256(beacon.encode()).hexdigest()
    public = (await http.get(f"/v1/releases/{release['id']}")).json()
    assert public["beacon"] == beacon


async def test_an_unknown_release_is_not_found(http):
    for release_id in (999_999_999, 2**63):
        answer = await http.get(f"/v1/releases/{release_id}")
        assert answer.status_code == 404
        assert answer.json()["code"] == "not_found"


def release_of(**fields: Any) -> Release:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": 1, "title": "t", "mode": "lottery", "term": "x", "term_cap": None,
        "opens_at": now, "closes_at": now + HOUR, "window_s": None, "claim_hold_s": 60,
        "general_sale_at": None, "max_wishes": 5, "beacon": BEACON, "beacon_commitment": "c",
        "tiers": (), "created_at": now, "course_ids": (1,), "drawn_at": None}
    return Release(**{**values, **fields})


def test_a_release_knows_its_state_and_its_tiers():
    now = datetime.now(UTC)
    lottery = release_of(opens_at=now, closes_at=now + HOUR)
    assert [lottery.state(now - HOUR), lottery.state(now), lottery.state(now + 2 * HOUR)] == [
        "scheduled", "open", "closed"]
    assert release_of(drawn_at=now + 2 * HOUR).state(now + 3 * HOUR) == "drawn"
    fcfs = release_of(mode="fcfs", closes_at=None, opens_at=now)
    assert fcfs.state(now + 100 * HOUR) == "open" and not fcfs.is_draw and lottery.is_draw
    tiered = release_of(opens_at=now, tiers=(Tier("b", now - HOUR), Tier("a", now - 2 * HOUR),
                                             Tier("c", now - HOUR)))
    assert tiered.ranked_tiers() == ["a", "b", "c"]
    assert tiered.tier_opens_at("a") == now - 2 * HOUR
    assert tiered.tier_opens_at("other") == now == tiered.tier_opens_at(None)


# --- refusals, each writing nothing ---------------------------------------------------------

async def test_an_unknown_course_is_refused(http, db):
    (course,) = await courses(http, 1)
    body = release_body("fcfs", [course["id"], 999_999_999, 2**63])
    answer = await refused(http, db, body, 422, "unknown_course")
    assert answer["course_ids"] == [999_999_999, 2**63]


async def test_a_course_belongs_to_one_release(http, db):
    taken, free = await courses(http, 2)
    first = await create(http, release_body("fcfs", [taken["id"]]))
    assert first.status_code == 201, first.text

    answer = await refused(http, db, release_body("window", [free["id"], taken["id"]]),
                           409, "course_in_release")

    assert (answer["course_id"], answer["release_id"]) == (taken["id"], first.json()["id"])


async def test_a_course_with_bookings_or_waiters_is_refused(http, db):
    booked, untouched = await courses(http, 2)
    full_id = (await make_course(http, 1, venue_id=booked["venue_id"]))["id"]
    assert (await grab(http, booked["id"], unique("early"))).status_code == 201
    assert (await grab(http, full_id, unique("early"))).status_code == 201
    waiter = resident(unique("waiter"))
    joined = await http.post(f"/v1/courses/{full_id}/waitlist", headers=waiter)
    assert joined.status_code == 201, joined.text

    for course_id in (booked["id"], full_id):
        answer = await refused(http, db, release_body("fcfs", [untouched["id"], course_id]),
                               409, "course_has_bookings")
        assert answer["course_id"] == course_id


async def test_the_releases_of_a_term_share_one_cap(http, db):
    first, second, third, fourth = await courses(http, 4)
    term = unique("term")
    made = await create(http, release_body("fcfs", [first["id"]], term=term, term_cap=2))
    assert made.status_code == 201, made.text

    for cap in (3, None):
        body = release_body("fcfs", [second["id"]], term=term, term_cap=cap)
        answer = await refused(http, db, body, 409, "term_cap_mismatch")
        assert (answer["term"], answer["term_cap"]) == (term, 2)
    same = await create(http, release_body("lottery", [third["id"]], term=term, term_cap=2))
    assert same.status_code == 201, same.text

    uncapped = unique("term")
    assert (await create(http, release_body("fcfs", [fourth["id"]], term=uncapped))
            ).status_code == 201
    answer = await refused(http, db, release_body("fcfs", [second["id"]], term=uncapped,
                                                  term_cap=1), 409, "term_cap_mismatch")
    assert answer["term_cap"] is None


async def test_times_out_of_order_are_refused(http, db):
    (course,) = await courses(http, 1)
    course_id = course["id"]
    starts_at = at(course["starts_at"])
    opens_at = datetime.now(UTC) + HOUR
    late_tier = [{"name": "senior", "opens_at": (opens_at + HOUR).isoformat()}]
    for body in (
        release_body("fcfs", [course_id], opens_at=opens_at.isoformat(), tiers=late_tier),
        release_body("lottery", [course_id], opens_at=opens_at.isoformat(),
                     closes_at=opens_at.isoformat()),
        release_body("lottery", [course_id], opens_at=opens_at.isoformat(),
                     closes_at=(opens_at + HOUR).isoformat(),
                     general_sale_at=(opens_at + HOUR / 2).isoformat()),
    ):
        await refused(http, db, body, 422, "bad_times")

    just_before = starts_at - timedelta(seconds=60)
    for body in (  # each names the course that would start first
        release_body("window", [course_id], opens_at=just_before.isoformat()),
        release_body("lottery", [course_id], opens_at=(starts_at - HOUR).isoformat(),
                     closes_at=(starts_at + HOUR).isoformat()),
        release_body("lottery", [course_id], opens_at=(starts_at - 2 * HOUR).isoformat(),
                     closes_at=(starts_at - HOUR).isoformat(),
                     general_sale_at=(starts_at + HOUR).isoformat()),
        release_body("fcfs", [course_id], opens_at=(starts_at + HOUR).isoformat()),
    ):
        answer = await refused(http, db, body, 422, "bad_times")
        assert answer["course_id"] == course_id and str(course_id) in answer["detail"]


async def test_a_draw_needs_a_beacon(http, db):
    (course,) = await courses(http, 1)
    for mode in ("window", "lottery"):
        body = release_body(mode, [course["id"]])
        del body["beacon"]
        await refused(http, db, body, 422, "beacon_required")


async def test_fields_of_another_mode_and_repeats_are_refused(http, db):
    first, second = await courses(http, 2)
    later = (datetime.now(UTC) + 3 * HOUR).isoformat()
    soon = datetime.now(UTC).isoformat()  # before each release's opening
    no_close = release_body("lottery", [first["id"]])
    del no_close["closes_at"]
    for field, body in (
        ("window_s", release_body("lottery", [first["id"]], window_s=60)),
        ("closes_at", release_body("window", [first["id"]], closes_at=later)),
        ("claim_hold_s", release_body("window", [first["id"]], claim_hold_s=600)),
        ("general_sale_at", release_body("window", [first["id"]], general_sale_at=later)),
        ("beacon", release_body("fcfs", [first["id"]], beacon=BEACON)),
        ("max_wishes", release_body("fcfs", [first["id"]], max_wishes=3)),
        ("course_ids", release_body("fcfs", [first["id"], second["id"], first["id"]])),
        ("tiers", release_body("fcfs", [first["id"]], tiers=[
            {"name": "senior", "opens_at": soon}, {"name": "senior", "opens_at": soon}])),
        ("closes_at", no_close),
    ):
        answer = await refused(http, db, body, 422, "invalid")
        assert answer["field"] == field


@pytest.mark.parametrize("change", [
    {"window_s": 1}, {"window_s": 3601}, {"term_cap": 0}, {"term_cap": 21},
    {"claim_hold_s": 59}, {"max_wishes": 11}, {"beacon": "too short"}, {"course_ids": []},
    {"mode": "auction"}, {"title": ""}, {"term": "x" * 101}, {"opens_at": "2026-09-01T09:00:00"},
    {"tiers": [{"name": "x" * 41, "opens_at": "2026-09-01T09:00:00Z"}]},
    {"tiers": [{"name": "senior", "opens_at": "2026-09-01T09:00:00Z", "extra": 1}]},
    {"colour": "red"},
])
async def test_wrong_types_and_ranges_are_invalid_as_elsewhere(http, db, change):
    (course,) = await courses(http, 1)
    valid = release_body("window", [course["id"]])
    before = await snapshot(db, [course["id"]], valid["term"])
    answer = await create(http, {**valid, **change})
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid"), answer.text
    assert answer.json()["detail"]
    assert await snapshot(db, [course["id"]], valid["term"]) == before


async def test_only_an_operator_creates_a_release(http, db):
    course = (await courses(http, 1))[0]
    body = release_body("fcfs", [course["id"]])
    before = await snapshot(db, [course["id"]], body["term"])
    venue = auth("venue", unique("staff"), venue_id=course["venue_id"])
    for headers in (resident(unique("r")), venue):
        answer = await create(http, body, headers)
        assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")
    answer = await http.post("/v1/releases", json=body)
    assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized")
    assert await snapshot(db, [course["id"]], body["term"]) == before


async def test_two_releases_racing_for_one_course_get_one_201(http, db):
    for _ in range(5):
        shared, mine, theirs = await courses(http, 3)
        answers = await asyncio.gather(
            create(http, release_body("fcfs", [mine["id"], shared["id"]])),
            create(http, release_body("window", [shared["id"], theirs["id"]])))

        assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
        won = next(a for a in answers if a.status_code == 201).json()
        lost = next(a for a in answers if a.status_code == 409).json()
        assert lost["code"] == "course_in_release"
        assert (lost["course_id"], lost["release_id"]) == (shared["id"], won["id"])
        rows = await db.fetch("SELECT id, release_id FROM courses WHERE id = ANY($1::bigint[])",
                              [shared["id"], mine["id"], theirs["id"]])
        in_release = {row["id"] for row in rows if row["release_id"] == won["id"]}
        assert in_release == set(won["course_ids"])
        assert all(row["release_id"] in (None, won["id"]) for row in rows)


# --- a course in a release --------------------------------------------------------------------

async def test_a_course_keeps_its_release_opening(http, db):
    (course,) = await courses(http, 1)
    body = release_body("fcfs", [course["id"]])
    release = (await create(http, body)).json()
    url = f"/v1/courses/{course['id']}"
    before = (await http.get(url)).json()

    moved = await http.patch(url, json={"sales_open_at": datetime.now(UTC).isoformat()},
                             headers=OPERATOR)

    assert (moved.status_code, moved.json()["code"]) == (409, "course_in_release"), moved.text
    assert moved.json()["detail"] and moved.json()["release_id"] == release["id"]
    assert await db.fetchval("SELECT sales_open_at FROM courses WHERE id = $1",
                             course["id"]) == at(body["opens_at"])
    same = await http.patch(url, json={"sales_open_at": before["sales_open_at"], "capacity": 7},
                            headers=OPERATOR)  # the same opening; fcfs: capacity is free
    assert same.status_code == 200, same.text
    assert at(same.json()["sales_open_at"]) == at(body["opens_at"])
    assert same.json()["capacity"] == 7


async def test_a_pending_draw_keeps_its_capacity(http, db):
    first, second = await courses(http, 2)
    release = (await create(http, release_body("window", [first["id"], second["id"]]))).json()
    url = f"/v1/courses/{first['id']}"

    bigger = await http.patch(url, json={"capacity": 9}, headers=OPERATOR)

    assert (bigger.status_code, bigger.json()["code"]) == (409, "draw_pending"), bigger.text
    assert bigger.json()["detail"] and bigger.json()["release_id"] == release["id"]
    assert await db.fetchval("SELECT capacity FROM courses WHERE id = $1", first["id"]) == 5
    renamed = await http.patch(url, json={"title": "Erhu for beginners", "capacity": 5},
                               headers=OPERATOR)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["title"] == "Erhu for beginners"
    assert renamed.json()["release_id"] == release["id"]


# --- the tier claim ---------------------------------------------------------------------------

def test_a_token_carries_its_tier():
    verifier = TokenVerifier(SECRET)
    senior = verifier.verify(mint(SECRET, "resident", "r-1", tier="senior"))
    assert (senior.sub, senior.role, senior.tier) == ("r-1", "resident", "senior")
    assert verifier.verify(mint(SECRET, "resident", "r-2")).tier is None
    for wrong in ("", "x" * 41, "sen\x00ior"):
        with pytest.raises(Unauthorized):
            verifier.verify(mint(SECRET, "resident", "r-3", tier=wrong))
