"""One clock per comparison: Redis's for pending marks and the sweeper's pace, Postgres's for
holds. Each test gives the worker a clock of its own, an hour off, which must change nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from itertools import count
from types import SimpleNamespace
from typing import Any

from conftest import SweeperPaused, unique, wait_for
from inprocess import PENDING_TIMEOUT_S, course_row, seat_path
from redis.asyncio import Redis

from booking.bookings import Grabbed
from booking.lifecycle.sweeper import FULL_ROUND_MARK, _sweep_round, sweep_forever
from booking.seats import SeatGate, course_keys
from booking.seats.reconcile import reconcile_course

HOUR_S = 3600.0


def skewed_time(offset_s: float) -> SimpleNamespace:
    """The `time` module of a worker whose wall clock is `offset_s` off."""
    clock = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return SimpleNamespace(**{**clock, "time": lambda: time.time() + offset_s})


class AheadDatetime(datetime):
    """`datetime` for a worker whose wall clock runs an hour ahead."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(seconds=HOUR_S)


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def test_a_holds_expiry_is_postgres_now_plus_the_hold(db, redis, monkeypatch):
    monkeypatch.setattr("booking.bookings.datetime", AheadDatetime)
    monkeypatch.setattr("booking.ledger.commit.datetime", AheadDatetime, raising=False)
    course_id = await course_row(db, capacity=3, price_cents=500, hold_minutes=10)
    hold = timedelta(minutes=10)
    async with seat_path(db, redis) as path:
        before = await db.fetchval("SELECT now()")
        answer = await path.bookings.grab(course_id, unique("payer"))
        after = await db.fetchval("SELECT now()")

    assert isinstance(answer, Grabbed) and answer.booking.status == "held"
    expires_at = answer.booking.expires_at
    assert expires_at is not None and before + hold <= expires_at <= after + hold
    assert expires_at - answer.booking.created_at == hold
    row = await db.fetchrow("SELECT created_at, expires_at FROM bookings WHERE id = $1::uuid",
                            answer.booking.id)
    assert (row["created_at"], row["expires_at"]) == (answer.booking.created_at, expires_at)


async def test_a_seat_being_written_is_not_stale_to_a_worker_whose_clock_runs_ahead(
        db, redis, monkeypatch):
    monkeypatch.setattr("booking.seats.reconcile.time", skewed_time(HOUR_S), raising=False)
    course_id = await course_row(db, capacity=2)
    who, booking_id = unique("writing"), "00000000-0000-4000-8000-000000000001"
    gate = SeatGate(redis)
    async with SweeperPaused(redis):
        await reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S)
        taken = await gate.grab(course_id, who, booking_id)  # its row is still being written
        result = await reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S)
        holders = await redis.hgetall(course_keys(course_id)[1])
    await gate.close()

    assert taken.outcome == "taken"
    assert result is not None and result.given_back == 0
    assert holders == {who: booking_id}


async def test_a_dead_grabs_seat_is_found_by_a_worker_whose_clock_runs_behind(
        db, redis, monkeypatch):
    monkeypatch.setattr("booking.lifecycle.sweeper.time", skewed_time(-HOUR_S), raising=False)
    course_id = await course_row(db, capacity=2)
    ghost = unique("ghost")
    gate = SeatGate(redis)
    async with SweeperPaused(redis):
        await reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S)
        await gate.grab(course_id, ghost, "00000000-0000-4000-8000-000000000002")
        # Its writer died a pending timeout and a second ago, by the clock that stamped it.
        stamped = await redis_ms(redis) - int(PENDING_TIMEOUT_S * 1000) - 1000
        await redis.zadd(course_keys(course_id)[2], {ghost: stamped}, xx=True)
        ours = await redis.set(FULL_ROUND_MARK, "1", nx=True, px=60_000)  # a stale-only round
        try:
            await _sweep_round(db, gate, PENDING_TIMEOUT_S, 1.0)
        finally:
            if ours:
                await redis.delete(FULL_ROUND_MARK)
        holders = await redis.hgetall(course_keys(course_id)[1])
    await gate.close()

    assert holders == {}


_names = count(1)


async def test_the_sweepers_pace_is_kept_by_redis_clock(private_stores, monkeypatch):
    """A round keeps the lock until 0.9 intervals after it began, by Redis's clock (the one
    that lets the lock lapse): a worker an hour ahead must not keep it for an hour."""
    monkeypatch.setattr("booking.lifecycle.sweeper.time", skewed_time(HOUR_S), raising=False)
    pool, redis = private_stores
    gate = SeatGate(redis)
    sweeper = asyncio.create_task(sweep_forever(pool, gate, PENDING_TIMEOUT_S, 0.05))
    try:
        async def full_round_ran() -> bool:
            return bool(await redis.exists(FULL_ROUND_MARK))

        await wait_for(full_round_ran, timeout=10)  # the first round is a full one
        await redis.delete(FULL_ROUND_MARK)
        await wait_for(full_round_ran, timeout=10)  # so is the next: it came on time
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await gate.close()
