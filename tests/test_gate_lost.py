"""A course Redis loses again right after it was loaded (a FLUSHALL, repeated, or a failover
in the middle of a grab) is answered 503 `unavailable`, safe to retry, never a 500; one lost
once is loaded again and the grab goes on.

The loss is made to happen on purpose: the real loader loads the course, then its keys are
deleted before the grab asks the gate again."""

from __future__ import annotations

import uuid

from inprocess import course_row

from booking.seats import SeatGate, course_keys
from booking.seats.gate import Outcome, SyncResult
from booking.seats.reconcile import CourseLoader
from booking.seats.seating import Seats, refusal


class LosesAfterLoading:
    """The real loader, after which Redis loses the course `times` times more."""

    def __init__(self, loader: CourseLoader, redis, times: int) -> None:
        self.loader = loader
        self.redis = redis
        self.times = times

    async def load(self, course_id: int) -> SyncResult | None:
        loaded = await self.loader.load(course_id)
        if self.times > 0:
            self.times -= 1
            await self.redis.delete(*course_keys(course_id))
        return loaded


async def test_a_course_lost_after_every_load_is_a_503_to_retry(db, redis):
    course_id = await course_row(db, 5)
    gate = SeatGate(redis)
    try:
        seats = Seats(gate, LosesAfterLoading(CourseLoader(db, gate, 5.0), redis, times=99))
        decision = await seats.take(course_id, "lost-" + uuid.uuid4().hex, str(uuid.uuid4()))
        assert decision.outcome is Outcome.MISSING
        answer = refusal(decision)
        assert (answer.status_code, answer.code) == (503, "unavailable")
    finally:
        await gate.close()


async def test_a_course_lost_once_after_its_load_is_loaded_again_and_grabbed(db, redis):
    course_id = await course_row(db, 5)
    gate = SeatGate(redis)
    try:
        seats = Seats(gate, LosesAfterLoading(CourseLoader(db, gate, 5.0), redis, times=1))
        decision = await seats.take(course_id, "lost-" + uuid.uuid4().hex, str(uuid.uuid4()))
        assert decision.outcome is Outcome.TAKEN
    finally:
        await gate.close()
