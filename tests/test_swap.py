"""Swapping a seat for another course, the cancellation deadline, and the lock order that
keeps swaps and cancels from deadlocking."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from conftest import (
    OPERATOR,
    Barrier,
    active_rows,
    cancel,
    gate_left,
    grab,
    join_waitlist,
    lock_waiters,
    make_course,
    my_bookings,
    pay,
    resident,
    unique,
    wait_for,
)

from booking.ops.check import check_invariants


async def swap(http, booking_id: str, who: str, course_id: int):
    return await http.post(f"/v1/bookings/{booking_id}/swap", json={"course_id": course_id},
                           headers=resident(who))


async def active_courses(http, who: str) -> list[int]:
    return sorted(b["course_id"] for b in await my_bookings(http, who)
                  if b["status"] in ("confirmed", "held"))


async def test_a_swap_moves_the_seat_and_frees_the_old_one_for_the_waitlist(http, redis):
    old = await make_course(http, capacity=1)
    target = await make_course(http, capacity=1)
    who, waiter = unique("swapper"), unique("waiter")
    booking = (await grab(http, old["id"], who)).json()
    await join_waitlist(http, old["id"], waiter)

    moved = await swap(http, booking["id"], who, target["id"])

    assert moved.status_code == 201, moved.text
    assert moved.json()["course_id"] == target["id"] and moved.json()["status"] == "confirmed"
    assert await active_courses(http, who) == [target["id"]]
    assert await active_courses(http, waiter) == [old["id"]]
    assert await gate_left(redis, old["id"]) == 0 and await gate_left(redis, target["id"]) == 0


async def test_a_swap_to_a_full_course_keeps_the_old_seat(http):
    old = await make_course(http, capacity=1)
    full = await make_course(http, capacity=1)
    await grab(http, full["id"], unique("first"))
    who = unique("swapper")
    booking = (await grab(http, old["id"], who)).json()

    refused = await swap(http, booking["id"], who, full["id"])
    same = await swap(http, booking["id"], who, old["id"])

    assert (refused.status_code, refused.json()["code"]) == (409, "sold_out")
    assert (same.status_code, same.json()["code"]) == (409, "same_course")
    assert await active_courses(http, who) == [old["id"]]


async def test_swaps_under_contention_never_leave_two_seats_or_none(http, db, redis):
    origin = await make_course(http, capacity=40)
    target = await make_course(http, capacity=15)
    residents = [unique("mover") for _ in range(40)]
    bookings = [(await grab(http, origin["id"], who)).json()["id"] for who in residents]

    answers = await asyncio.gather(*(swap(http, booking, who, target["id"])
                                     for who, booking in zip(residents, bookings, strict=True)))

    moved = sum(a.status_code == 201 for a in answers)
    assert moved == 15
    assert {a.json()["code"] for a in answers if a.status_code != 201} == {"sold_out"}
    holdings = await asyncio.gather(*(active_courses(http, who) for who in residents))
    assert all(len(courses) == 1 for courses in holdings)
    assert await active_rows(db, target["id"]) == 15
    assert await active_rows(db, origin["id"]) == 25
    assert await gate_left(redis, origin["id"]) == 15
    report = await check_invariants(db, redis, None, course_ids=[origin["id"], target["id"]])
    assert report.ok, report.violations


async def test_a_cancel_after_the_deadline_is_refused(http, db):
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    course = await make_course(http, capacity=2, cancel_deadline=deadline.isoformat())
    who = unique("late")
    booking = (await grab(http, course["id"], who)).json()

    async def deadline_passed() -> bool:  # by Postgres's clock, the one the service asks
        return await db.fetchval("SELECT now() > $1", deadline)

    await wait_for(deadline_passed)

    late = await cancel(http, booking["id"], who)

    assert (late.status_code, late.json()["code"]) == (409, "cancel_deadline_passed")
    assert await active_courses(http, who) == [course["id"]]


# Holds every cancel of the two courses (after the counting trigger has locked the old course's
# row) until the test lets go of an advisory lock: both swaps of a pair are then inside their
# transactions at once, each holding what it took so far.
SWAP_BARRIER = """
CREATE OR REPLACE FUNCTION test_swap_barrier() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE course_id IN ({a}, {b}) AND status = 'cancelled')
    THEN
        PERFORM pg_advisory_xact_lock_shared({key});
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER test_swap_barrier AFTER UPDATE ON bookings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION test_swap_barrier();
"""
LIFT_SWAP_BARRIER = "DROP TRIGGER IF EXISTS test_swap_barrier ON bookings"
BARRIER_KEY = 0x5357_4150  # "SWAP"
async def test_swaps_in_opposite_directions_inside_one_window_both_succeed(http, db, redis):
    """A->B and B->A, each stopped right after its cancel (the old course's row locked): before
    the fix each then waited for the other's course and Postgres killed one as a deadlock (503).
    Locking both course rows in id order first makes the second wait for the first instead."""
    a, b = await make_course(http, capacity=2), await make_course(http, capacity=2)
    left, right = unique("a-to-b"), unique("b-to-a")
    from_a = (await grab(http, a["id"], left)).json()["id"]
    from_b = (await grab(http, b["id"], right)).json()["id"]
    async with Barrier(db, BARRIER_KEY, SWAP_BARRIER.format(a=a["id"], b=b["id"], key=BARRIER_KEY),
                       LIFT_SWAP_BARRIER) as barrier:
        swaps = asyncio.gather(swap(http, from_a, left, b["id"]),
                               swap(http, from_b, right, a["id"]))
        await wait_for(lock_waiters(db, 2), timeout=10)  # at the barrier, or behind the other
        await barrier.lift()
        answers = await swaps

    assert [(r.status_code, r.json().get("code")) for r in answers] == [(201, None)] * 2
    assert await active_courses(http, left) == [b["id"]]
    assert await active_courses(http, right) == [a["id"]]
    report = await check_invariants(db, redis, None, course_ids=[a["id"], b["id"]])
    assert report.ok, report.violations


async def test_forty_opposite_swaps_at_once_all_land_and_the_counts_agree(http, db, redis):
    """20 residents swap A->B while 20 swap B->A, with room in both: no 5xx, each resident holds
    exactly one seat, and seats_left agrees with the roster as soon as the last answer is in."""
    a, b = await make_course(http, capacity=40), await make_course(http, capacity=40)
    movers = {who: a["id"] for who in (unique("a-to-b") for _ in range(20))}
    movers |= {who: b["id"] for who in (unique("b-to-a") for _ in range(20))}
    held = {who: (await grab(http, course, who)).json()["id"] for who, course in movers.items()}
    other = {a["id"]: b["id"], b["id"]: a["id"]}

    answers = await asyncio.gather(*(swap(http, held[who], who, other[course])
                                     for who, course in movers.items()))
    seats_left = {c["id"]: (await http.get(f"/v1/courses/{c['id']}")).json()["seats_left"]
                  for c in (a, b)}

    assert [r.status_code for r in answers if r.status_code >= 500] == []
    assert [r.status_code for r in answers] == [201] * 40, [r.text for r in answers]
    holdings = await asyncio.gather(*(active_courses(http, who) for who in movers))
    assert [len(courses) for courses in holdings] == [1] * 40
    assert {who: courses[0] for who, courses in zip(movers, holdings, strict=True)} == \
        {who: other[course] for who, course in movers.items()}
    for course in (a["id"], b["id"]):
        assert seats_left[course] == 40 - await active_rows(db, course) == 20
    report = await check_invariants(db, redis, None, course_ids=[a["id"], b["id"]])
    assert report.ok, report.violations


# Holds one resident's cancel after its booking row is locked and before the counting trigger
# (a statement trigger, fired after the row triggers) locks the course row.
CANCEL_BARRIER = """
CREATE OR REPLACE FUNCTION test_cancel_barrier() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({key});
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER test_cancel_barrier AFTER UPDATE ON bookings FOR EACH ROW
    WHEN (OLD.resident_id = '{who}' AND NEW.status = 'cancelled')
    EXECUTE FUNCTION test_cancel_barrier();
"""
LIFT_CANCEL_BARRIER = "DROP TRIGGER IF EXISTS test_cancel_barrier ON bookings"


async def test_a_cancel_beside_its_course_being_cancelled_both_succeed(http, db, redis):
    """A resident cancels a paid booking while the venue cancels the course. The venue's
    transaction locks the course, then its bookings; before the fix the resident's locked the
    booking, then (counting) the course: a deadlock, one of them answered 503. Now the cancel
    locks the course row first, and the refund is owed exactly once."""
    course = await make_course(http, capacity=2, price_cents=4500)
    who = unique("canceller")
    booking = (await grab(http, course["id"], who)).json()
    assert (await pay(http, booking["id"], 4500)).json()["outcome"] == "confirmed"
    async with Barrier(db, BARRIER_KEY, CANCEL_BARRIER.format(key=BARRIER_KEY, who=who),
                       LIFT_CANCEL_BARRIER) as barrier:
        mine = asyncio.ensure_future(cancel(http, booking["id"], who))
        await wait_for(lock_waiters(db, 1), timeout=10)  # the resident's cancel, at the barrier
        venue = asyncio.ensure_future(http.patch(
            f"/v1/courses/{course['id']}", json={"status": "cancelled"}, headers=OPERATOR))
        await wait_for(lock_waiters(db, 2), timeout=10)  # the venue's, waiting too
        await barrier.lift()
        answers = await asyncio.gather(mine, venue)

    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert answers[1].json()["status"] == "cancelled"
    refunds = await db.fetch("SELECT outcome FROM payments WHERE booking_id = $1",
                             uuid.UUID(booking["id"]))
    assert [r["outcome"] for r in refunds] == ["refund_due"]
    report = await check_invariants(db, redis, None, course_ids=[course["id"]])
    assert report.ok, report.violations
