"""The sweeper's round lock: held for as long as a round runs, however long that is."""

from __future__ import annotations

import asyncio

from conftest import wait_for

from booking.core.tasks import stop
from booking.lifecycle.sweeper import RECONCILER_LOCK, sweep_forever
from booking.seats import SeatGate

PENDING_TIMEOUT_S = 0.3  # the lock's life: a round must outlive it several times over
INTERVAL_S = 0.1


async def redis_ms(redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def test_a_round_longer_than_its_lock_keeps_the_lock(private_stores):
    """A round held up (the courses table locked by the test) outlives its lock's life three
    times over: the lock is still that round's, so no second round can begin beside it."""
    pool, redis = private_stores
    gate = SeatGate(redis)
    blocker = await pool.acquire()
    blocked = blocker.transaction()
    await blocked.start()
    await blocker.execute("LOCK TABLE courses IN ACCESS EXCLUSIVE MODE")
    sweeper = asyncio.create_task(sweep_forever(pool, gate, PENDING_TIMEOUT_S, INTERVAL_S))
    try:
        async def round_began() -> bool:
            return bool(await redis.exists(RECONCILER_LOCK))

        await wait_for(round_began, timeout=10)
        token = await redis.get(RECONCILER_LOCK)
        until = await redis_ms(redis) + int(PENDING_TIMEOUT_S * 3000)

        async def lock_life_passed_thrice() -> bool:
            return await redis_ms(redis) > until

        await wait_for(lock_life_passed_thrice, timeout=10)
        assert await redis.get(RECONCILER_LOCK) == token  # the same round, still running
        assert not await redis.set(RECONCILER_LOCK, "another worker", nx=True, px=1000)
    finally:
        await blocked.rollback()
        await pool.release(blocker)
        await stop(sweeper)
        await gate.close()
