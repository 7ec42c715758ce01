"""A sweeper round syncs the courses that need it, not every course.

A stale round syncs the courses holding a stale pending mark; a full round compares every
course's figures in the gate with the ledger's in bulk and syncs those that disagree. Each test
damages the gate (or the ledger) behind the service's back, as a lost write or a lost Redis would,
with the service's sweepers paused, then runs one round in the test's own process and looks.
"""

from __future__ import annotations

import uuid
from typing import Any

from conftest import SweeperPaused, active_rows, gate_left, unique
from inprocess import PENDING_TIMEOUT_S, course_row

from booking.lifecycle.sweeper import FULL_ROUND_MARK, _sweep_round
from booking.seats import SeatGate, course_keys
from booking.seats.reconcile import compare_all, reconcile_course

INTERVAL_S = 1.0
INSERT_BOOKING = """
INSERT INTO bookings (id, course_id, resident_id) VALUES ($1, $2, $3) RETURNING id::text
"""
INSERT_WAITER = "INSERT INTO waitlist (course_id, resident_id) VALUES ($1, $2)"


class CountingGate(SeatGate):
    """A gate that remembers which courses it synced."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.synced: list[int] = []

    async def sync(self, course_id: int, *args: Any, **kwargs: Any) -> Any:
        self.synced.append(course_id)
        return await super().sync(course_id, *args, **kwargs)


async def one_round(db: Any, gate: SeatGate, full: bool) -> None:
    """One round, full or stale as asked (the full-round mark decides which)."""
    await gate.redis.delete(FULL_ROUND_MARK)
    if not full:
        await gate.redis.set(FULL_ROUND_MARK, "1", px=60_000)
    await _sweep_round(db, gate, PENDING_TIMEOUT_S, INTERVAL_S)
    await gate.redis.delete(FULL_ROUND_MARK)


async def loaded(db: Any, gate: SeatGate, capacity: int) -> int:
    course_id = await course_row(db, capacity=capacity)
    await reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S)
    return course_id


async def test_a_full_round_repairs_what_no_pending_mark_covers_and_syncs_nothing_else(db, redis):
    gate = CountingGate(redis)
    async with SweeperPaused(redis):
        in_line = await loaded(db, gate, capacity=3)
        # A seat taken in the gate behind the ledger's back, with no pending mark.
        taken_behind = await loaded(db, gate, capacity=3)
        squatter = unique("squatter")
        await gate.grab(taken_behind, squatter, str(uuid.uuid4()))
        await redis.zrem(course_keys(taken_behind)[2], squatter)
        # A course whose keys Redis lost, one booking in the ledger.
        lost = await loaded(db, gate, capacity=3)
        holder = unique("holder")
        booking_id = await db.fetchval(INSERT_BOOKING, uuid.uuid4(), lost, holder)
        await redis.delete(*course_keys(lost))
        # A resident waiting in the ledger whom the gate never heard of, a seat free.
        waited = await loaded(db, gate, capacity=1)
        waiter = unique("waiter")
        await db.execute(INSERT_WAITER, waited, waiter)

        gate.synced.clear()
        await one_round(db, gate, full=False)  # no stale mark: a stale round syncs none of them
        assert not {in_line, taken_behind, lost, waited} & set(gate.synced)
        assert await gate_left(redis, taken_behind) == 2

        await one_round(db, gate, full=True)
        assert {taken_behind, lost, waited} <= set(gate.synced) and in_line not in gate.synced
        assert await redis.hgetall(course_keys(taken_behind)[1]) == {}
        assert await gate_left(redis, taken_behind) == 3
        assert await redis.hgetall(course_keys(lost)[1]) == {holder: booking_id}
        assert await gate_left(redis, lost) == 2
        promoted = await db.fetchval("SELECT status FROM waitlist WHERE course_id = $1",
                                     waited)
        assert promoted == "promoted" and await active_rows(db, waited) == 1
        assert await gate_left(redis, waited) == 0

        compared = await compare_all(db, gate, PENDING_TIMEOUT_S, chunk=7)  # chunks join up
        assert compared.courses >= 4
        assert not {in_line, taken_behind, lost, waited} & set(compared.out_of_line)
    await gate.close()


async def test_a_stale_round_gives_back_a_dead_grabs_seat_and_syncs_only_its_course(db, redis):
    gate = CountingGate(redis)
    async with SweeperPaused(redis):
        in_line = await loaded(db, gate, capacity=2)
        dead = await loaded(db, gate, capacity=2)
        ghost = unique("ghost")
        await gate.grab(dead, ghost, str(uuid.uuid4()))
        seconds, micros = await redis.time()
        stamped = seconds * 1000 + micros // 1000 - int(PENDING_TIMEOUT_S * 1000) - 1000
        await redis.zadd(course_keys(dead)[2], {ghost: stamped}, xx=True)
        gate.synced.clear()

        await one_round(db, gate, full=False)

        assert dead in gate.synced and in_line not in gate.synced
        assert await redis.hgetall(course_keys(dead)[1]) == {}
        assert await gate_left(redis, dead) == 2
    await gate.close()


async def test_a_grab_being_written_is_not_out_of_line(db, redis):
    """A young pending holder the ledger lacks yet is a write in flight, not a disagreement."""
    gate = SeatGate(redis)
    async with SweeperPaused(redis):
        course_id = await loaded(db, gate, capacity=2)
        await gate.grab(course_id, unique("writing"), str(uuid.uuid4()))

        compared = await compare_all(db, gate, PENDING_TIMEOUT_S)

        assert course_id not in compared.out_of_line
    await gate.close()
