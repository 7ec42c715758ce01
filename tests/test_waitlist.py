"""The waitlist: every freed seat goes to the first resident waiting, never to a racer."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from conftest import (
    OPERATOR,
    SweeperPaused,
    active_rows,
    cancel,
    gate_left,
    grab,
    hammer,
    join_waitlist,
    make_course,
    my_bookings,
    resident,
    unique,
    wait_for,
)

from booking.ledger.promotions import free_seat
from booking.ops.check import check_invariants
from booking.seats import SeatGate

PROMOTION_NOTES = """
SELECT resident_id, payload->>'booking_id' AS booking_id FROM outbox
WHERE kind = 'promoted' AND (payload->>'course_id')::bigint = $1
"""


async def sold_out_course(http, seats: int, **extra) -> tuple[dict, list[tuple[str, str]]]:
    """A course whose every seat is taken; returns it and (resident, booking id) per seat."""
    course = await make_course(http, capacity=seats, **extra)
    holders = []
    for _ in range(seats):
        who = unique("holder")
        answer = await grab(http, course["id"], who)
        assert answer.status_code == 201, answer.text
        holders.append((who, answer.json()["id"]))
    return course, holders


async def place(http, course_id: int, who: str) -> int | None:
    answer = await http.get(f"/v1/courses/{course_id}/waitlist/me", headers=resident(who))
    return answer.json()["position"] if answer.status_code == 200 else None


async def active_booking(http, course_id: int, who: str) -> dict | None:
    mine = [b for b in await my_bookings(http, who)
            if b["course_id"] == course_id and b["status"] in ("confirmed", "held")]
    return mine[0] if mine else None


async def no_violations_on(db, redis, course_id: int) -> None:
    report = await check_invariants(db, redis, None, course_ids=[course_id])
    assert report.ok, report.violations


async def test_join_see_your_place_and_leave(http):
    roomy = await make_course(http, capacity=2)
    course, _ = await sold_out_course(http, seats=1)
    first, second = unique("first"), unique("second")

    unknown = await join_waitlist(http, 999_999_999, first)
    free_seat = await join_waitlist(http, roomy["id"], first)
    joined = await join_waitlist(http, course["id"], first)
    again = await join_waitlist(http, course["id"], first)
    behind = await join_waitlist(http, course["id"], second)

    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (free_seat.status_code, free_seat.json()["code"]) == (409, "seats_available")
    assert joined.status_code == 201 and joined.json()["position"] == 1
    assert again.status_code == 200 and again.json() == joined.json()
    assert behind.json()["position"] == 2
    left = await http.delete(f"/v1/courses/{course['id']}/waitlist/me", headers=resident(first))
    assert left.status_code == 200 and left.json()["status"] == "left"
    assert await place(http, course["id"], first) is None
    assert await place(http, course["id"], second) == 1


async def test_a_cancelled_seat_goes_to_the_first_waiting_not_to_a_racer(http, db, redis):
    course, holders = await sold_out_course(http, seats=1)
    waiter = unique("waiter")
    await join_waitlist(http, course["id"], waiter)

    # Racers hammer the course from before the cancel is sent until after it has answered, so
    # grabs are in flight at the moment the seat is freed.
    racers: list[httpx.Response] = []
    cancel_answered, hammering = asyncio.Event(), asyncio.Event()
    lanes = asyncio.create_task(hammer(http, course["id"], 10, racers, cancel_answered.is_set,
                                       hammering))
    await asyncio.wait_for(hammering.wait(), 30)
    cancelled = await cancel(http, holders[0][1], holders[0][0])
    cancel_answered.set()
    await lanes

    assert cancelled.status_code == 200
    assert {(r.status_code, r.json()["code"]) for r in racers} == {(409, "sold_out")}
    promoted = await active_booking(http, course["id"], waiter)
    assert promoted is not None and promoted["status"] == "confirmed"
    notes = await db.fetch(PROMOTION_NOTES, course["id"])
    assert [(n["resident_id"], n["booking_id"]) for n in notes] == [(waiter, promoted["id"])]
    assert await gate_left(redis, course["id"]) == 0
    await no_violations_on(db, redis, course["id"])


async def test_100_concurrent_cancels_go_to_the_waitlist_in_order(http, db, redis):
    course, holders = await sold_out_course(http, seats=100)
    waiters = [unique("waiter") for _ in range(150)]
    for who in waiters:
        assert (await join_waitlist(http, course["id"], who)).status_code == 201

    cancels = await asyncio.gather(*(cancel(http, booking, who) for who, booking in holders))
    racers = await asyncio.gather(*(grab(http, course["id"], unique("racer")) for _ in range(30)))

    assert all(c.status_code == 200 for c in cancels)
    assert all(r.status_code == 409 for r in racers)
    promoted = await asyncio.gather(*(active_booking(http, course["id"], w) for w in waiters))
    assert all(b is not None for b in promoted[:100])  # the first 100, each exactly one seat
    assert all(b is None for b in promoted[100:])
    places = await asyncio.gather(*(place(http, course["id"], w) for w in waiters[100:]))
    assert places == list(range(1, 51))  # the rest still wait, in the order they came
    notes = await db.fetch(PROMOTION_NOTES, course["id"])
    assert sorted(n["resident_id"] for n in notes) == sorted(waiters[:100])
    assert await active_rows(db, course["id"]) == 100
    assert await gate_left(redis, course["id"]) == 0
    await no_violations_on(db, redis, course["id"])


async def test_more_capacity_goes_to_the_waitlist_first(http, db, redis):
    course, _ = await sold_out_course(http, seats=2)
    waiters = [unique("waiter") for _ in range(3)]
    for who in waiters:
        await join_waitlist(http, course["id"], who)

    patched = await http.patch(f"/v1/courses/{course['id']}", json={"capacity": 4},
                               headers=OPERATOR)

    assert patched.status_code == 200 and patched.json()["seats_left"] == 0
    assert [await active_booking(http, course["id"], w) is not None for w in waiters] == [
        True, True, False]
    assert await place(http, course["id"], waiters[2]) == 1
    await no_violations_on(db, redis, course["id"])


async def test_a_lapsed_hold_becomes_a_hold_of_the_first_waiting(http, db, redis):
    course, holders = await sold_out_course(http, seats=1, price_cents=1200)
    waiter = unique("waiter")
    await join_waitlist(http, course["id"], waiter)
    await db.execute("UPDATE bookings SET expires_at = now() - interval '1 second' WHERE id = $1",
                     uuid.UUID(holders[0][1]))

    async def promoted() -> bool:
        return await active_booking(http, course["id"], waiter) is not None

    await wait_for(promoted, timeout=15)
    booking = await active_booking(http, course["id"], waiter)
    assert booking["status"] == "held" and booking["expires_at"] is not None
    await no_violations_on(db, redis, course["id"])


async def test_a_cancelled_course_cancels_everyone_and_tells_them(http, db, redis):
    course, holders = await sold_out_course(http, seats=2)
    waiter = unique("waiter")
    await join_waitlist(http, course["id"], waiter)

    patched = await http.patch(f"/v1/courses/{course['id']}", json={"status": "cancelled"},
                               headers=OPERATOR)

    assert patched.status_code == 200
    for who, _ in holders:
        assert await active_booking(http, course["id"], who) is None
    assert await place(http, course["id"], waiter) is None
    told = await db.fetch("SELECT resident_id FROM outbox WHERE kind = 'course_cancelled' "
                          "AND (payload->>'course_id')::bigint = $1", course["id"])
    assert sorted(r["resident_id"] for r in told) == sorted([*(w for w, _ in holders), waiter])
    await no_violations_on(db, redis, course["id"])


# A join paused at its COMMIT: a deferred trigger on the new waitlist row waits for an advisory
# lock the test holds (keyed by the course), so the test decides when the row becomes visible.
PAUSE_JOIN_AT_COMMIT = """
CREATE OR REPLACE FUNCTION test_pause_join() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.course_id = {course_id} THEN PERFORM pg_advisory_xact_lock_shared(NEW.course_id); END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_pause_join_{course_id} AFTER INSERT ON waitlist
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_pause_join();
"""
WAITS_FOR_A_LOCK = "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype <> 'advisory'"
JOIN_PAUSED = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = $1 AND objsubid = 1
"""


async def test_a_seat_freed_while_a_join_commits_never_skips_the_joiner(http, db, redis):
    course, holders = await sold_out_course(http, seats=1)
    (holder, booking_id), joiner, cid = holders[0], unique("joiner"), course["id"]
    gate = SeatGate(redis)
    await db.execute(PAUSE_JOIN_AT_COMMIT.format(course_id=cid))
    try:
        async with SweeperPaused(redis), db.acquire() as pauser:
            await pauser.execute("SELECT pg_advisory_lock($1::bigint)", cid)
            # The holder cancels; its row commits (what DELETE /v1/bookings does first) ...
            await gate.mark_leaving(cid, holder, booking_id)
            await db.execute("UPDATE bookings SET status = 'cancelled', cancelled_at = now() "
                             "WHERE id = $1", uuid.UUID(booking_id))
            joining = asyncio.create_task(join_waitlist(http, cid, joiner))
            await wait_for(lambda: _paused(db, cid))
            # ... and its seat is freed in the gate while the join is between gate and commit
            # (until that step is over, or waits for a lock the paused join holds).
            freeing = asyncio.create_task(free_seat(db, gate, cid, holder, booking_id))
            await wait_for(lambda: _over_or_blocked(freeing, db))
            await pauser.execute("SELECT pg_advisory_unlock($1::bigint)", cid)
            await freeing
            joined = await joining
            racer = await grab(http, cid, unique("racer"))
    finally:
        await db.execute(f"DROP TRIGGER IF EXISTS test_pause_join_{cid} ON waitlist")
        await gate.close()

    promoted = await active_booking(http, cid, joiner)
    waits = await place(http, cid, joiner)
    if promoted is not None:  # the joiner got the freed seat, the racer nothing
        assert racer.status_code == 409 and waits is None, racer.text
    else:  # told to grab instead, and not left waiting behind the racer's seat
        state = (joined.status_code, joined.json().get("code"), waits, racer.status_code)
        assert state[:3] == (409, "seats_available", None), state
    in_gate = await redis.zrange(f"course:{{{cid}}}:waiting", 0, -1)
    assert joiner not in in_gate
    await no_violations_on(db, redis, cid)


async def _paused(db, course_id: int) -> bool:
    return await db.fetchval(JOIN_PAUSED, course_id) > 0


async def _over_or_blocked(step: asyncio.Task, db) -> bool:
    """The step is over, or some backend waits for a row or transaction lock (the paused join's
    course lock): releasing the join then is the only way on."""
    return step.done() or await db.fetchval(WAITS_FOR_A_LOCK) > 0
