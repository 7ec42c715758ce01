"""A grab is answered once its row is committed, without waiting for the gate to clear its
pending mark; the mark is cleared right after, and a clearing that comes late never clears the
mark of a newer grab by the same resident."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from conftest import SweeperPaused, unique
from inprocess import course_row, seat_path

from booking.bookings import Grabbed
from booking.seats import SeatGate, course_keys


class SettlePaused(SeatGate):
    """The service's gate, with the clearing of pending marks held until `go` is set."""

    def __init__(self, redis) -> None:
        super().__init__(redis)
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def settle(self, committed: Iterable[tuple[int, str, str]]) -> None:
        committed = list(committed)
        self.asked.set()
        await self.go.wait()
        await super().settle(committed)


async def pending(redis, course_id: int) -> list[str]:
    return await redis.zrange(course_keys(course_id)[2], 0, -1)


async def test_a_grab_is_answered_before_its_pending_mark_is_cleared(db, redis):
    course_id = await course_row(db, capacity=3)
    resident = unique("quick")
    gate = SettlePaused(redis)
    async with SweeperPaused(redis), seat_path(db, redis, gate=gate) as path:
        await path.loader.load(course_id)
        answer = await asyncio.wait_for(path.bookings.grab(course_id, resident), 10)
        assert isinstance(answer, Grabbed) and answer.new
        await gate.asked.wait()
        assert await pending(redis, course_id) == [resident], "the mark is still there"
        row = await db.fetchval("SELECT status FROM bookings WHERE id = $1",
                                uuid.UUID(answer.booking.id))
        assert row == "confirmed"  # the answer came after the commit

        gate.go.set()
        await path.ledger.settled()
        assert await pending(redis, course_id) == []
        assert await redis.hget(course_keys(course_id)[1], resident) == answer.booking.id


async def test_a_late_settle_leaves_a_newer_grab_of_the_same_resident_pending(db, redis):
    """The resident's first booking is cancelled and they grab the course again before the
    first booking's mark is cleared: the newer grab is still being written, so its mark stays
    (without it the reconciler would take the holder for settled and give the seat back)."""
    course_id = await course_row(db, capacity=3)
    resident = unique("again")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with SweeperPaused(redis), seat_path(db, redis) as path:
        await path.loader.load(course_id)
        assert (await path.gate.grab(course_id, resident, first)).outcome == "taken"
        freed, _ = await path.gate.free(course_id, resident, first)
        assert freed
        assert (await path.gate.grab(course_id, resident, second)).outcome == "taken"

        await path.gate.settle([(course_id, resident, first)])  # the first one's, late
        assert await pending(redis, course_id) == [resident]

        await path.gate.settle([(course_id, resident, second)])
        assert await pending(redis, course_id) == []
        assert await redis.hget(course_keys(course_id)[1], resident) == second
