"""Draw releases through the HTTP API: entries, the draw, what it books, what it publishes.

Entries close on purpose (the test moves the release's close to now in Postgres) instead of
waiting for a clock, except for the window release, whose whole point is the service drawing
by itself: that test waits for the record to appear.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import (
    OPERATOR,
    SECRET,
    Barrier,
    grab,
    join_waitlist,
    lock_waiters,
    make_venue,
    resident,
    run_cli,
    service_env,
    unique,
    wait_for,
)

from booking.core.auth import Principal, mint
from booking.ops.check import check_invariants
from booking.releases import draw as algorithm
from booking.releases.drawing import Draws
from booking.releases.entries import Entries

BEACON = "0123456789 sealed on the notice board"
CLOSE_NOW = "UPDATE releases SET closes_at = clock_timestamp() WHERE id = $1"


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def courses_of(http: httpx.AsyncClient, n: int, capacity: int,
                     paid: int = 0) -> list[int]:
    """n courses at one venue, starting in a week; the first `paid` cost 30 yuan."""
    venue_id = await make_venue(http)
    now = datetime.now(UTC)
    ids = []
    for i in range(n):
        body = {"title": unique("lottery-course"), "category": "music", "teacher": "Ms Li",
                "starts_at": iso(now + timedelta(days=7)),
                "ends_at": iso(now + timedelta(days=7, hours=2)), "capacity": capacity,
                "sales_open_at": iso(now - timedelta(seconds=1)), "venue_id": venue_id,
                "price_cents": 3000 if i < paid else 0}
        answer = await http.post("/v1/courses", json=body, headers=OPERATOR)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


async def release(http: httpx.AsyncClient, mode: str, course_ids: list[int],
                  **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {"title": unique("release"), "mode": mode, "course_ids": course_ids,
                            "term": unique("term"), "opens_at": iso(now - timedelta(minutes=1))}
    if mode == "lottery":
        body |= {"closes_at": iso(now + timedelta(hours=1)), "beacon": BEACON}
    if mode == "window":
        body |= {"beacon": BEACON}
    body |= fields
    answer = await http.post("/v1/releases", json=body, headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def enter(http: httpx.AsyncClient, release_id: int, who: str, wishes: list[int],
                headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.put(f"/v1/releases/{release_id}/entry", json={"wishes": wishes},
                          headers=headers or resident(who))


def refused(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert (answer.status_code, answer.json().get("code")) == (status, code), answer.text
    assert answer.json()["detail"]
    return answer.json()


async def test_a_lottery_books_its_wins_and_publishes_a_draw_anyone_can_recheck(
        http, db, redis, stores, tmp_path):
    course_ids = await courses_of(http, 6, capacity=12, paid=1)
    lottery = await release(http, "lottery", course_ids, term_cap=2, max_wishes=3,
                            claim_hold_s=3600)
    rng = random.Random(13)
    wishes = {unique("entrant"): rng.sample(course_ids, 3) for _ in range(300)}
    for batch in range(0, 300, 50):
        answers = await asyncio.gather(*(enter(http, lottery["id"], who, wished)
                                         for who, wished in list(wishes.items())[batch:batch + 50]))
        assert [a.status_code for a in answers] == [201] * len(answers), answers[0].text
    await db.execute(CLOSE_NOW, lottery["id"])

    draws = await asyncio.gather(*(http.post(f"/v1/releases/{lottery['id']}/draw",
                                             headers=OPERATOR) for _ in range(10)))
    assert sorted(a.status_code for a in draws) == [200] * 9 + [201]
    assert len({a.text for a in draws}) == 1  # one record
    record = draws[0].json()
    assert record["entries_count"] == 300 and record["beacon"] == BEACON

    rows = await db.fetch("SELECT course_id, resident_id, status, expires_at FROM bookings "
                          "WHERE course_id = ANY($1::bigint[])", course_ids)
    assert len(rows) == 6 * 12  # 900 wishes for 72 seats: every seat won, once
    per_course = Counter(row["course_id"] for row in rows)
    assert all(per_course[c] <= 12 for c in course_ids)
    assert all(row["course_id"] in wishes[row["resident_id"]] for row in rows)
    per_resident = Counter(row["resident_id"] for row in rows)
    assert max(per_resident.values()) <= 2
    drawn_at = datetime.fromisoformat(record["drawn_at"])
    for row in rows:
        if row["course_id"] == course_ids[0]:  # the paid one: a hold for claim_hold_s
            assert row["status"] == "held"
            assert abs((row["expires_at"] - drawn_at).total_seconds() - 3600) < 5
        else:
            assert row["status"] == "confirmed"

    results = algorithm.read_results((await http.get(record["results_url"])).content)
    waitlists: dict[int, list[tuple[int, str]]] = defaultdict(list)
    entry_of = {}
    for who in wishes:
        mine = (await http.get(f"/v1/releases/{lottery['id']}/entry",
                               headers=resident(who))).json()
        entry_of[mine["entry_id"]] = who
        for wish in mine["results"]:
            if wish["outcome"] == "waitlist":
                waitlists[wish["course_id"]].append((wish["position"], who))
            won = any(r["course_id"] == wish["course_id"] for r in rows
                      if r["resident_id"] == who)
            assert (wish["outcome"] == "won") == won, (who, wish)
            assert ("booking_id" in wish) == won
    assert {e.entry_id for e in results} == set(entry_of)
    for course_id, places in waitlists.items():
        in_order = await db.fetch("SELECT resident_id FROM waitlist WHERE course_id = $1 "
                                  "AND status = 'waiting' ORDER BY id", course_id)
        assert [r[0] for r in in_order] == [who for _, who in sorted(places)]
    report = await check_invariants(db, redis, None, course_ids=course_ids)
    assert report.ok, report.violations

    env = service_env(stores, tmp_path)
    base_url = str(http.base_url).rstrip("/")
    checked = run_cli(env, "verify-draw", "--url", base_url, "--release", str(lottery["id"]))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("verified")


async def test_grabs_and_joins_wait_for_the_draw_then_leftovers_open_at_general_sale(http, db):
    course_ids = await courses_of(http, 2, capacity=3)
    sale = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    lottery = await release(http, "lottery", course_ids, general_sale_at=iso(
        datetime.now(UTC) + timedelta(hours=2)))
    assert (await enter(http, lottery["id"], unique("fan"), [course_ids[0]])).status_code == 201

    body = refused(await grab(http, course_ids[0], unique("racer")), 409, "draw_pending")
    assert body["release_id"] == lottery["id"]
    refused(await join_waitlist(http, course_ids[1], unique("queuer")), 409, "draw_pending")

    await db.execute("UPDATE releases SET general_sale_at = $2 WHERE id = $1",
                     lottery["id"], sale)
    await db.execute(CLOSE_NOW, lottery["id"])
    assert (await http.post(f"/v1/releases/{lottery['id']}/draw",
                            headers=OPERATOR)).status_code == 201
    later = refused(await grab(http, course_ids[1], unique("racer")), 409, "not_open")
    assert datetime.fromisoformat(later["opens_at"]) == sale


async def test_a_window_is_drawn_by_the_service_itself_and_leftovers_go_first_come(http):
    course_ids = await courses_of(http, 2, capacity=2)
    window = await release(http, "window", course_ids, window_s=2,
                           opens_at=iso(datetime.now(UTC)))
    first, second = unique("early"), unique("late")
    assert (await enter(http, window["id"], first, [course_ids[0]])).status_code == 201
    assert (await enter(http, window["id"], second, course_ids)).status_code == 201

    async def drawn() -> bool:
        return (await http.get(f"/v1/releases/{window['id']}/draw")).status_code == 200

    await wait_for(drawn, timeout=30)
    record = (await http.get(f"/v1/releases/{window['id']}/draw")).json()
    assert record["entries_count"] == 2
    state = (await http.get(f"/v1/releases/{window['id']}")).json()["state"]
    assert state == "drawn"
    # three seats won of four; the fourth goes to whoever grabs first
    assert (await grab(http, course_ids[1], unique("racer"))).status_code == 201


async def test_entries_refusals_leave_the_entry_as_it_was(http, db):
    course_ids = await courses_of(http, 3, capacity=5)
    lottery = await release(http, "lottery", course_ids, max_wishes=2)
    rid, who = lottery["id"], unique("entrant")
    made = await enter(http, rid, who, [course_ids[0]])
    assert made.status_code == 201
    entry_id = made.json()["entry_id"]

    refused(await enter(http, rid, who, []), 422, "no_wishes")
    refused(await enter(http, rid, who, course_ids), 422, "too_many_wishes")
    refused(await enter(http, rid, who, [course_ids[1], course_ids[1]]), 422, "duplicate_wish")
    other = (await courses_of(http, 1, capacity=1))[0]
    refused(await enter(http, rid, who, [other]), 422, "unknown_course")
    refused(await enter(http, 10**12, who, [course_ids[0]]), 404, "not_found")
    refused(await enter(http, rid, who, [course_ids[0]], headers=OPERATOR), 403, "forbidden")
    assert (await http.put(f"/v1/releases/{rid}/entry",
                           json={"wishes": [course_ids[0]]})).status_code == 401
    kept = (await http.get(f"/v1/releases/{rid}/entry", headers=resident(who))).json()
    assert (kept["entry_id"], kept["wishes"]) == (entry_id, [course_ids[0]])

    replaced = await enter(http, rid, who, [course_ids[2], course_ids[0]])
    assert replaced.status_code == 200
    assert (replaced.json()["entry_id"], replaced.json()["wishes"]) == (
        entry_id, [course_ids[2], course_ids[0]])

    leaver = unique("leaver")
    assert (await enter(http, rid, leaver, [course_ids[1]])).status_code == 201
    gone = await http.delete(f"/v1/releases/{rid}/entry", headers=resident(leaver))
    assert gone.status_code == 200 and gone.json()["status"] == "withdrawn"
    refused(await http.get(f"/v1/releases/{rid}/entry", headers=resident(leaver)),
            404, "not_found")

    await db.execute(CLOSE_NOW, rid)
    refused(await enter(http, rid, who, [course_ids[1]]), 409, "entry_closed")
    refused(await http.delete(f"/v1/releases/{rid}/entry", headers=resident(who)),
            409, "entry_closed")
    kept = (await http.get(f"/v1/releases/{rid}/entry", headers=resident(who))).json()
    assert kept["wishes"] == [course_ids[2], course_ids[0]]
    frozen = algorithm.read_entries((await http.get(f"/v1/releases/{rid}/entries.jsonl")).content)
    assert [(e.entry_id, e.wishes) for e in frozen] == [
        (entry_id, (course_ids[2], course_ids[0]))]


async def test_entries_open_at_each_callers_own_opening(http):
    course_ids = await courses_of(http, 1, capacity=5)
    now = datetime.now(UTC)
    lottery = await release(http, "lottery", course_ids, opens_at=iso(now + timedelta(hours=1)),
                            closes_at=iso(now + timedelta(hours=2)),
                            tiers=[{"name": "senior", "opens_at": iso(now - timedelta(
                                minutes=1))}])
    senior = {"Authorization": "Bearer " + mint(SECRET, "resident", unique("senior"),
                                                tier="senior")}
    assert (await enter(http, lottery["id"], "", course_ids, headers=senior)).status_code == 201
    early = await enter(http, lottery["id"], unique("early"), course_ids)
    body = refused(early, 409, "not_open")
    assert datetime.fromisoformat(body["opens_at"]) == datetime.fromisoformat(
        lottery["opens_at"])
    assert int(early.headers["Retry-After"]) > 3000


async def test_draw_refusals(http):
    course_ids = await courses_of(http, 2, capacity=5)
    lottery = await release(http, "lottery", course_ids[:1])
    fcfs = await release(http, "fcfs", course_ids[1:])
    refused(await http.post(f"/v1/releases/{lottery['id']}/draw", headers=OPERATOR),
            409, "entries_open")
    refused(await http.post(f"/v1/releases/{fcfs['id']}/draw", headers=OPERATOR),
            409, "no_draw")
    refused(await http.post(f"/v1/releases/{lottery['id']}/draw",
                            headers=resident(unique("r"))), 403, "forbidden")
    refused(await http.get(f"/v1/releases/{lottery['id']}/draw"), 409, "not_drawn")
    refused(await http.get(f"/v1/releases/{lottery['id']}/entries.jsonl"), 409, "entries_open")
    refused(await http.get(f"/v1/releases/{lottery['id']}/results.jsonl"), 409, "not_drawn")
    refused(await enter(http, fcfs["id"], unique("r"), course_ids[1:]), 409, "no_draw")
    refused(await http.get("/v1/releases/999999999/draw"), 404, "not_found")


@pytest.mark.parametrize("where", ["entries", "results"])
async def test_verify_draw_fails_when_a_published_byte_changes(http, db, stores, tmp_path,
                                                                where):
    course_ids = await courses_of(http, 2, capacity=2)
    lottery = await release(http, "lottery", course_ids)
    for _ in range(6):
        who = unique("entrant")
        assert (await enter(http, lottery["id"], who, course_ids)).status_code == 201
    await db.execute(CLOSE_NOW, lottery["id"])
    record = (await http.post(f"/v1/releases/{lottery['id']}/draw", headers=OPERATOR)).json()
    files = {"draw": (await http.get(f"/v1/releases/{lottery['id']}/draw")).content,
             "entries": (await http.get(record["entries_url"])).content,
             "results": (await http.get(record["results_url"])).content}
    paths = []
    for name, content in files.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        paths.append(str(path))
    env = service_env(stores, tmp_path)
    assert run_cli(env, "verify-draw", *paths).returncode == 0

    tampered = bytearray(files[where])  # one character of a value, so the file still reads
    mark = b'"entry_id":"' if where == "entries" else b'"ticket":"'
    spot = tampered.index(mark) + len(mark)
    tampered[spot] = ord("0") if tampered[spot] != ord("0") else ord("1")
    (tmp_path / f"{where}.json").write_bytes(bytes(tampered))
    checked = run_cli(env, "verify-draw", *paths)
    assert checked.returncode == 1, checked.stdout + checked.stderr


async def test_a_senior_grabs_before_the_opening_and_others_hear_their_own_opening(http):
    course_ids = await courses_of(http, 1, capacity=5)
    now = datetime.now(UTC).replace(microsecond=0)  # not_open speaks in milliseconds
    fcfs = await release(http, "fcfs", course_ids, opens_at=iso(now + timedelta(hours=1)),
                         tiers=[{"name": "senior", "opens_at": iso(now - timedelta(minutes=1))}])
    senior = unique("senior")
    token = {"Authorization": "Bearer " + mint(SECRET, "resident", senior, tier="senior")}
    early = await http.post(f"/v1/courses/{course_ids[0]}/bookings", headers=token)
    assert early.status_code == 201, early.text

    others = await grab(http, course_ids[0], unique("everyone"))
    body = refused(others, 409, "not_open")
    assert datetime.fromisoformat(body["opens_at"]) == datetime.fromisoformat(fcfs["opens_at"])
    assert int(others.headers["Retry-After"]) > 3000
    junior = {"Authorization": "Bearer " + mint(SECRET, "resident", unique("j"), tier="junior")}
    refused(await http.post(f"/v1/courses/{course_ids[0]}/bookings", headers=junior),
            409, "not_open")  # a tier the release does not name counts as none


async def test_in_a_window_entering_at_once_or_four_seconds_later_fares_alike(http):
    """The service draws a 5 s window by itself within 5 s of its close; the entries made at
    its opening and those made 4 s later have the same mean place in the draw's order over
    200 offline re-draws with other beacons (deterministic: fixed beacons)."""
    course_ids = await courses_of(http, 4, capacity=3)
    window = await release(http, "window", course_ids, window_s=5,
                           opens_at=iso(datetime.now(UTC)))
    opened = datetime.fromisoformat(window["opens_at"])

    async def enter_all(group: str) -> set[str]:
        answers = await asyncio.gather(*(enter(http, window["id"], unique(group), course_ids[:2])
                                         for _ in range(20)))
        assert [a.status_code for a in answers] == [201] * 20
        return {a.json()["entry_id"] for a in answers}

    early = await enter_all("early")

    async def four_seconds_in() -> bool:
        return datetime.now(UTC) >= opened + timedelta(seconds=4)

    await wait_for(four_seconds_in)
    late = await enter_all("late")

    async def drawn() -> bool:
        return (await http.get(f"/v1/releases/{window['id']}/draw")).status_code == 200

    await wait_for(drawn, timeout=30)
    record = (await http.get(f"/v1/releases/{window['id']}/draw")).json()
    closes = datetime.fromisoformat(window["closes_at"])
    assert (datetime.fromisoformat(record["drawn_at"]) - closes).total_seconds() < 5
    entries = algorithm.read_entries((await http.get(record["entries_url"])).content)
    assert {e.entry_id for e in entries} == early | late

    places: dict[str, list[int]] = {"early": [], "late": []}
    for n in range(200):
        seed = algorithm.seed_of(window["id"], record["entries_digest"], f"other beacon {n:03d}")
        order = sorted(entries, key=lambda e: algorithm.ticket_of(seed, e.entry_id))
        for place, entry in enumerate(order):
            places["early" if entry.entry_id in early else "late"].append(place)
    mean = {group: sum(p) / len(p) for group, p in places.items()}
    assert abs(mean["early"] - mean["late"]) < 1.5, mean  # 40 places: 19.5 each, by chance


BLOCK_ENTRY = """
CREATE OR REPLACE FUNCTION test_lottery_block_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.resident_id = '{resident}' THEN
        PERFORM pg_advisory_xact_lock_shared({key});  -- the barrier: the entry waits
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_lottery_block_entry BEFORE INSERT ON release_entries
    FOR EACH ROW EXECUTE FUNCTION test_lottery_block_entry();
"""
STOP_BLOCKING_ENTRY = "DROP TRIGGER IF EXISTS test_lottery_block_entry ON release_entries"
BLOCK_KEY = 0x454E_5452  # "ENTR"


async def test_an_entry_written_across_the_close_is_in_the_frozen_file(http, db, stores):
    """The entry checks the time (open) and is held in Postgres before its row is written;
    entries close and the freeze starts meanwhile: the freeze waits for the entry, which ends
    in the file. (In-process services on a pool without a statement timeout, so the waits
    last as long as the test holds them.)"""
    course_ids = await courses_of(http, 1, capacity=3)
    lottery = await release(http, "lottery", course_ids)
    who = unique("last-minute")
    pool = await asyncpg.create_pool(stores.database_url, min_size=2, max_size=4)
    block = BLOCK_ENTRY.format(resident=who, key=BLOCK_KEY)
    try:
        async with Barrier(db, BLOCK_KEY, block, STOP_BLOCKING_ENTRY) as barrier:
            entries, draws = Entries(pool), Draws(pool, None)  # type: ignore[arg-type]
            caller = Principal(sub=who, role="resident", exp=time.time() + 600)
            entering = asyncio.create_task(entries.put(lottery["id"], caller, course_ids))
            await wait_for(lock_waiters(db, 1))
            await db.execute(CLOSE_NOW, lottery["id"])
            freezing = asyncio.create_task(draws.freeze(lottery["id"]))
            await wait_for(lock_waiters(db, 2))  # the freeze waits for the entry
            await barrier.lift()
            entry, created = await entering
            await freezing
    finally:
        await pool.close()
    assert created
    frozen = algorithm.read_entries((await http.get(f"/v1/releases/{lottery['id']}/"
                                                    "entries.jsonl")).content)
    assert [e.entry_id for e in frozen] == [entry.entry_id]
