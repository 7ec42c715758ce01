"""The term cap: no resident holds more seats in a term's courses than its cap, on every path
that gives a seat (grab, swap, promotion, a draw's wins), and Postgres refuses the extra
booking even when the gate is bypassed."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from conftest import (
    OPERATOR,
    SECRET,
    Barrier,
    cancel,
    grab,
    join_waitlist,
    lock_waiters,
    resident,
    run_cli,
    service_env,
    unique,
    wait_for,
)
from inprocess import seat_path
from test_lottery import CLOSE_NOW, courses_of, enter, refused, release

from booking.bookings import Grabbed
from booking.core.auth import mint
from booking.core.errors import ApiError
from booking.ledger.term_cap import TermCaps, release_rules_changed
from booking.ops.check import check_invariants
from booking.seats.quota import TermQuota

# Makes one resident's row of one course fail as a full disk would: surely not written.
FAIL_ROW = """
CREATE OR REPLACE FUNCTION test_term_cap_fail_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.course_id = {course_id} AND NEW.resident_id = '{resident}' THEN
        RAISE EXCEPTION 'the disk said no';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_term_cap_fail_row BEFORE INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION test_term_cap_fail_row();
"""
STOP_FAILING = "DROP TRIGGER IF EXISTS test_term_cap_fail_row ON bookings"


async def capped_courses(http, n: int, capacity: int, cap: int = 2,
                         term: str | None = None) -> tuple[list[int], str]:
    """n courses of an fcfs release open now, in a term capped at `cap`."""
    course_ids = await courses_of(http, n, capacity=capacity)
    term = term or unique("term")
    await release(http, "fcfs", course_ids, term=term, term_cap=cap)
    return course_ids, term


async def held(db, who: str, course_ids: list[int]) -> list[int]:
    rows = await db.fetch("SELECT course_id FROM bookings WHERE resident_id = $1 AND "
                          "course_id = ANY($2::bigint[]) AND booking_active(status) "
                          "ORDER BY course_id", who, course_ids)
    return [row[0] for row in rows]


async def test_one_resident_firing_ten_grabs_at_once_holds_exactly_the_cap(http, db):
    course_ids, term = await capped_courses(http, 10, capacity=5)
    who = unique("greedy")
    answers = await asyncio.gather(*(grab(http, c, who) for c in course_ids))

    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 2, 409: 8}, [a.text for a in answers]
    mine = await held(db, who, course_ids)
    assert len(mine) == 2
    for answer in answers:
        if answer.status_code == 409:
            body = refused(answer, 409, "term_cap_reached")
            assert (body["term"], body["cap"]) == (term, 2)
    again = await grab(http, mine[0], who)  # a repeat grab of a held course: that booking
    assert again.status_code == 200 and again.json()["course_id"] == mine[0]
    # The seats the refused grabs took for a moment are back: 5 left in every other course.
    for course_id in set(course_ids) - set(mine):
        left = (await http.get(f"/v1/courses/{course_id}")).json()["seats_left"]
        assert left == 5


async def test_two_hundred_residents_each_firing_ten_grabs_hold_two_each(http, db):
    course_ids, _ = await capped_courses(http, 10, capacity=100)
    crowd = [unique("crowd") for _ in range(200)]
    await asyncio.gather(*(grab(http, c, who) for who in crowd for c in course_ids))

    rows = await db.fetch("SELECT resident_id, count(*) AS n FROM bookings WHERE "
                          "course_id = ANY($1::bigint[]) AND booking_active(status) "
                          "GROUP BY resident_id", course_ids)
    assert {row["resident_id"]: row["n"] for row in rows} == dict.fromkeys(crowd, 2)


async def test_a_cancel_gives_the_cap_back(http, db):
    course_ids, _ = await capped_courses(http, 3, capacity=5)
    who = unique("changer")
    first = (await grab(http, course_ids[0], who)).json()
    assert (await grab(http, course_ids[1], who)).status_code == 201
    refused(await grab(http, course_ids[2], who), 409, "term_cap_reached")

    assert (await cancel(http, first["id"], who)).status_code == 200
    assert (await grab(http, course_ids[2], who)).status_code == 201
    assert await held(db, who, course_ids) == course_ids[1:]


async def test_postgres_refuses_the_booking_past_the_cap_with_the_gate_bypassed(http, db):
    course_ids, _ = await capped_courses(http, 3, capacity=5)
    who = unique("bypasser")
    insert = "INSERT INTO bookings (id, course_id, resident_id) VALUES ($1, $2, $3)"
    for course_id in course_ids[:2]:
        await db.execute(insert, uuid.uuid4(), course_id, who)
    with pytest.raises(asyncpg.CheckViolationError) as refusal:
        await db.execute(insert, uuid.uuid4(), course_ids[2], who)
    assert refusal.value.constraint_name == "bookings_term_cap"
    assert len(await held(db, who, course_ids)) == 2


async def test_a_swap_within_the_term_moves_the_cap_and_one_from_outside_is_refused(http, db):
    course_ids, _ = await capped_courses(http, 3, capacity=5)
    outside = (await courses_of(http, 1, capacity=5))[0]
    who = unique("swapper")
    first = (await grab(http, course_ids[0], who)).json()
    assert (await grab(http, course_ids[1], who)).status_code == 201

    moved = await http.post(f"/v1/bookings/{first['id']}/swap",
                            json={"course_id": course_ids[2]}, headers=resident(who))
    assert moved.status_code == 201, moved.text
    assert await held(db, who, course_ids) == course_ids[1:]

    elsewhere = (await grab(http, outside, who)).json()
    into = await http.post(f"/v1/bookings/{elsewhere['id']}/swap",
                           json={"course_id": course_ids[0]}, headers=resident(who))
    refused(into, 409, "term_cap_reached")
    assert await held(db, who, [outside, *course_ids]) == [*course_ids[1:], outside]


async def test_a_promotion_skips_a_waiter_at_the_cap_who_leaves_that_waitlist(http, db):
    course_ids, _ = await capped_courses(http, 3, capacity=1)
    hot, a, b = course_ids
    holder, capped, next_one = unique("holder"), unique("capped"), unique("next")
    seat = (await grab(http, hot, holder)).json()
    assert (await join_waitlist(http, hot, capped)).status_code == 201
    assert (await join_waitlist(http, hot, next_one)).status_code == 201
    for course_id in (a, b):  # the first waiter reaches the cap elsewhere
        assert (await grab(http, course_id, capped)).status_code == 201

    assert (await cancel(http, seat["id"], holder)).status_code == 200

    assert await held(db, next_one, [hot]) == [hot]
    assert await held(db, capped, [hot]) == []
    place = await db.fetchval("SELECT status FROM waitlist WHERE course_id = $1 AND "
                              "resident_id = $2", hot, capped)
    assert place == "cleared"


async def test_a_draw_win_past_the_cap_since_the_close_is_declined_and_passes_down(http, db):
    term = unique("term")
    fcfs_courses, _ = await capped_courses(http, 1, capacity=5, cap=1, term=term)
    drawn = (await courses_of(http, 1, capacity=1))[0]
    opens_at = datetime.now(UTC) - timedelta(minutes=1)
    lottery = await release(http, "lottery", [drawn], term=term, term_cap=1,
                            opens_at=opens_at.isoformat(),
                            tiers=[{"name": "senior", "opens_at": opens_at.isoformat()}])
    winner, second = unique("winner"), unique("second")
    senior = {"Authorization": "Bearer " + mint(SECRET, "resident", winner, tier="senior")}
    assert (await enter(http, lottery["id"], winner, [drawn], headers=senior)).status_code == 201
    assert (await enter(http, lottery["id"], second, [drawn])).status_code == 201
    await db.execute(CLOSE_NOW, lottery["id"])
    frozen = (await http.get(f"/v1/releases/{lottery['id']}/entries.jsonl")).content
    assert frozen.count(b'"cap":1') == 2  # both had room when entries closed
    # After the close the senior, whom the draw puts first, takes a seat elsewhere in the term.
    assert (await grab(http, fcfs_courses[0], winner)).status_code == 201

    assert (await http.post(f"/v1/releases/{lottery['id']}/draw",
                            headers=OPERATOR)).status_code == 201
    mine = (await http.get(f"/v1/releases/{lottery['id']}/entry", headers=senior)).json()
    assert [w["outcome"] for w in mine["results"]] == ["won"]
    assert "booking_id" not in mine["results"][0]  # declined: no booking
    assert await held(db, winner, [drawn]) == []
    assert await held(db, second, [drawn]) == [drawn]  # the seat went down the waitlist


async def quota_of(redis, who: str) -> dict[str, str]:
    return await redis.hgetall(f"quota:{{r:{who}}}")


async def test_the_quota_comes_back_after_sold_out_and_after_a_failed_write(http, db):
    (full, open_one, other), _ = await capped_courses(http, 3, capacity=1, cap=1)
    assert (await grab(http, full, unique("first"))).status_code == 201
    who = unique("unlucky")
    refused(await grab(http, full, who), 409, "sold_out")
    assert (await grab(http, open_one, who)).status_code == 201

    doomed = unique("doomed")
    await db.execute(FAIL_ROW.format(course_id=other, resident=doomed))
    try:
        assert (await grab(http, other, doomed)).status_code == 503
    finally:
        await db.execute(STOP_FAILING)
    assert (await grab(http, other, doomed)).status_code == 201


async def test_an_expired_hold_gives_the_quota_back(http, db):
    paid = await courses_of(http, 2, capacity=5, paid=2)
    await release(http, "fcfs", paid, term=unique("term"), term_cap=1)
    who = unique("late-payer")
    hold = (await grab(http, paid[0], who)).json()
    assert hold["status"] == "held"
    refused(await grab(http, paid[1], who), 409, "term_cap_reached")
    await db.execute("UPDATE bookings SET expires_at = now() - interval '1 second' "
                     "WHERE id = $1", uuid.UUID(hold["id"]))

    async def expired() -> bool:
        status = await db.fetchval("SELECT status FROM bookings WHERE id = $1",
                                   uuid.UUID(hold["id"]))
        return status == "expired"

    await wait_for(expired)
    assert (await grab(http, paid[1], who)).status_code == 201


async def test_a_quota_that_counts_too_many_never_refuses_on_its_own_word(http, db, redis):
    course_ids, term = await capped_courses(http, 2, capacity=5, cap=2)
    who = unique("miscounted")
    assert (await grab(http, course_ids[0], who)).status_code == 201
    await redis.hset(f"quota:{{r:{who}}}", "999999999", f"h|{term}")  # a lost give-back

    assert (await grab(http, course_ids[1], who)).status_code == 201
    assert sorted(await quota_of(redis, who)) == sorted(str(c) for c in course_ids)


async def test_booking_reconcile_rebuilds_lost_quotas_and_postgres_refuses_meanwhile(
        http, db, redis, stores, tmp_path):
    course_ids, term = await capped_courses(http, 3, capacity=5, cap=2)
    who = unique("forgotten")
    for course_id in course_ids[:2]:
        assert (await grab(http, course_id, who)).status_code == 201
    await redis.delete(f"quota:{{r:{who}}}")  # Redis lost it

    refused(await grab(http, course_ids[2], who), 409, "term_cap_reached")  # Postgres's word
    rebuilt = run_cli(service_env(stores, tmp_path), "reconcile")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "term-cap quotas" in rebuilt.stdout
    assert await quota_of(redis, who) == {str(c): f"h|{term}" for c in course_ids[:2]}


async def test_the_checker_names_a_resident_over_a_terms_cap(http, db, redis):
    course_ids, term = await capped_courses(http, 2, capacity=5, cap=2)
    who = unique("over")
    for course_id in course_ids:
        assert (await grab(http, course_id, who)).status_code == 201
    assert (await check_invariants(db, redis, None, course_ids=course_ids)).ok

    await db.execute("UPDATE releases SET term_cap = 1 WHERE term = $1", term)  # by hand
    report = await check_invariants(db, redis, None, course_ids=course_ids)
    assert report.violations == [f"resident {who} holds 2 seats in term {term}, whose cap is 1"]


BLOCK_ROW = """
CREATE OR REPLACE FUNCTION test_term_cap_block_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.course_id = {course_id} AND NEW.resident_id = '{resident}' THEN
        PERFORM pg_advisory_xact_lock_shared({key});  -- the barrier: the write waits
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_term_cap_block_row BEFORE INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION test_term_cap_block_row();
"""
STOP_BLOCKING = "DROP TRIGGER IF EXISTS test_term_cap_block_row ON bookings"
BLOCK_KEY = 0x4341_5050  # "CAPP"


async def test_a_grab_refused_while_another_is_in_flight_says_which(http, db, redis, stores):
    """Cap 1: the first grab's write is held in Postgres (a barrier the test holds), so its
    quota is taken and undecided; the second grab is refused, naming the grab in flight,
    although Postgres holds no seat of theirs yet. (The seat path in-process, on a pool without
    a statement timeout, so the write waits as long as the test holds it.)"""
    (first, second), _ = await capped_courses(http, 2, capacity=5, cap=1)
    who = unique("hasty")
    block = BLOCK_ROW.format(course_id=first, resident=who, key=BLOCK_KEY)
    pool = await asyncpg.create_pool(stores.database_url, min_size=2, max_size=4)
    quota = TermQuota(redis, 30)
    try:
        async with seat_path(pool, redis, quota=quota) as path, \
                Barrier(db, BLOCK_KEY, block, STOP_BLOCKING) as barrier:
            in_flight = asyncio.create_task(path.bookings.grab(first, who))
            await wait_for(lock_waiters(db, 1))
            refusal = await path.bookings.grab(second, who)
            await barrier.lift()
            written = await in_flight
    finally:
        await quota.close()
        await pool.close()
    assert isinstance(refusal, ApiError) and refusal.code == "term_cap_reached", refusal
    assert (refusal.extra["held"], refusal.extra["in_flight"]) == ([], [first])
    assert isinstance(written, Grabbed) and written.new


# --- the rules snapshot (term_cap.TermCaps) ----------------------------------------------------
# Each TermCaps below stands for the snapshot of one service process: the service's own processes
# create the releases (over HTTP), these look at the ledger the way a grab there would.


async def test_a_course_first_asked_after_its_release_sees_it_in_a_process_with_a_fresh_snapshot(
        http, db):
    """The other process read its snapshot just before the release was created; the course was
    never asked about there, so its first grab waits for a snapshot read after it asked."""
    (before,) = await courses_of(http, 1, capacity=2)
    elsewhere = TermCaps(db, max_age_s=3600)  # no snapshot ages out during the test
    assert await elsewhere.of_course(before) is None
    course_ids, term = await capped_courses(http, 2, capacity=2, cap=1)

    rules = await elsewhere.of_course(course_ids[0])

    assert rules is not None and (rules.term, rules.cap, rules.mode) == (term, 1, "fcfs")
    assert elsewhere.reads == 2
    assert await elsewhere.of_course(course_ids[1]) == rules  # read after it was first asked
    assert elsewhere.reads == 3


async def test_a_course_asked_before_its_release_learns_it_when_told_or_when_the_snapshot_ages(
        http, db):
    (course_id,) = await courses_of(http, 1, capacity=2)
    told = TermCaps(db, max_age_s=3600)
    aging = TermCaps(db, max_age_s=0.2)
    assert await told.of_course(course_id) is None and await aging.of_course(course_id) is None
    await release(http, "fcfs", [course_id], term_cap=2)

    assert await told.of_course(course_id) is None  # its snapshot is an hour young: the bound
    release_rules_changed(db)  # what the process that created the release does
    assert (await told.of_course(course_id)).cap == 2

    async def aged_in() -> bool:
        return await aging.of_course(course_id) is not None

    await wait_for(aged_in, timeout=10)


async def test_a_crowd_of_first_grabs_shares_one_read_and_a_busy_process_reads_ahead(http, db):
    course_ids = await courses_of(http, 3, capacity=2)
    await release(http, "fcfs", course_ids, term_cap=2)
    caps = TermCaps(db, max_age_s=0.5)

    answers = await asyncio.gather(*(caps.of_course(c) for c in [*course_ids, 10**9] * 50))

    assert caps.reads == 1
    assert [a.cap for a in answers[:3]] == [2, 2, 2] and answers[3] is None
    kept = caps.reads

    async def read_ahead() -> bool:  # past half its age, asking starts a read without waiting
        await caps.of_course(course_ids[0])
        return caps.reads > kept

    await wait_for(read_ahead, timeout=10)


async def test_asking_while_a_read_is_under_way_queues_one_read_after_it(http, db):
    """The read under way began before the other courses were first asked about: they share
    one read queued behind it, never two at once."""
    course_ids = await courses_of(http, 3, capacity=2)
    await release(http, "fcfs", course_ids, term_cap=3)
    caps = TermCaps(db, max_age_s=3600)
    blocker = await db.acquire()
    blocked = blocker.transaction()
    await blocked.start()
    try:
        await blocker.execute("LOCK TABLE releases IN ACCESS EXCLUSIVE MODE")
        first = asyncio.create_task(caps.of_course(course_ids[0]))
        await wait_for(lock_waiters(db, 1))  # the first read is under way, held by the lock
        # These ask before the lock is lifted: their tasks run at the rollback's first await.
        later = asyncio.gather(*(caps.of_course(c) for c in course_ids[1:] * 20))
    finally:
        await blocked.rollback()
        await db.release(blocker)

    assert (await first).cap == 3 and {rules.cap for rules in await later} == {3}
    assert caps.reads == 2
