"""Abuse limits on the grab path: per resident and per client address, atomic in Redis.

Each limit is a fixed-window counter (ratelimit.lua) on a key of its own hash tag, so it works
on Redis Cluster. The checks of concurrent requests share one pipeline with the micro-batcher,
so a flood of refused requests costs a fraction of a round trip each and no seat decision.

A subject (resident or address) the counter said is over its limit is remembered by the process
until its window ends: its next requests are refused from memory, without Redis. That changes
no answer (a fixed window refuses everything until it ends, and the counter's key lapses then
whatever it holds) and makes an abuser's flood cost this process almost nothing.

A counter that does not answer lets its request through (logged, and counted in
`booking_rate_limit_unchecked_total`): on a cluster, one dead primary would otherwise refuse
residents whose courses live on healthy ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from booking.core.batching import ShardedBatcher
from booking.core.observability import RATE_LIMIT_UNCHECKED
from booking.core.stores import RedisClient
from booking.seats.scripts import Call, load_script, run_many, server_of

log = logging.getLogger("booking.ratelimit")


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int  # 0: no limit
    window_s: float


class RateLimiter:
    def __init__(self, redis: RedisClient, per_resident: Limit, per_address: Limit) -> None:
        self._redis = redis
        self._script = load_script(redis, "booking.seats", "ratelimit")
        self._limits = [(prefix, limit.requests, int(limit.window_s * 1000))
                        for prefix, limit in (("r", per_resident), ("a", per_address))
                        if limit.requests]
        self._checks: ShardedBatcher[Call, float] = ShardedBatcher(
            self._check_many, lambda call: server_of(redis, call[0][0]), flushers=1,
            max_batch=512)
        self._over: dict[str, float] = {}  # counter key -> when its window ends (monotonic)
        self._told_until = 0.0  # an unchecked limit is logged at most every 10 s

    async def close(self) -> None:
        await self._checks.close()

    async def wait_s(self, resident_id: str, address: str) -> float:
        """0 when this grab may go ahead, else how many seconds to wait."""
        if not self._limits:
            return 0.0
        remembered = self._remembered_wait(resident_id, address)
        if remembered:
            return remembered
        calls = [((_key(prefix, address if prefix == "a" else resident_id),),
                  (count, window_ms)) for prefix, count, window_ms in self._limits]
        if len(calls) == 1:
            return await self._checks.submit(calls[0])
        return max(await asyncio.gather(*(self._checks.submit(call) for call in calls)))

    def _remembered_wait(self, resident_id: str, address: str) -> float:
        """The wait of a subject known to be over its limit, or 0: ask Redis."""
        if not self._over:
            return 0.0
        now = time.monotonic()
        wait = 0.0
        for prefix, _, _ in self._limits:
            key = _key(prefix, address if prefix == "a" else resident_id)
            until = self._over.get(key)
            if until is not None:
                if until > now:
                    wait = max(wait, until - now)
                else:
                    del self._over[key]
        return wait

    def _remember(self, key: str, wait_ms: int) -> None:
        if len(self._over) >= _OVER_LIMIT:
            now = time.monotonic()
            self._over = {k: until for k, until in self._over.items() if until > now}
        self._over[key] = time.monotonic() + wait_ms / 1000

    async def _check_many(self, calls: list[Call]) -> list[float | Exception]:
        """Each counter's wait in seconds (0: under its limit)."""
        replies = await run_many(self._redis, self._script, calls)
        waits: list[float | Exception] = []
        for ((key,), _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                self._unchecked(reply)
                waits.append(0.0)
                continue
            if int(reply) > 0:  # type: ignore[call-overload]
                self._remember(key, int(reply))  # type: ignore[call-overload]
            waits.append(int(reply) / 1000)  # type: ignore[call-overload]
        return waits

    def _unchecked(self, error: object) -> None:
        """A counter that could not be asked (its server is down: on a cluster, a dead
        primary before its replica takes over) lets the request through: refusing honest
        residents of every shard for one shard's outage would be worse than a few seconds
        without a limit, and the seat itself is still decided by the gate."""
        RATE_LIMIT_UNCHECKED.inc()
        now = time.monotonic()
        if now >= self._told_until:
            log.warning("rate limit not checked, the request goes ahead: %s", error)
            self._told_until = now + 10


_OVER_LIMIT = 100_000  # remembered subjects before the lapsed ones are dropped


def _key(prefix: str, subject: str) -> str:
    """A subject's counter: its own hash tag, so each lives in one slot of a cluster."""
    return f"rate:{{{prefix}:{subject}}}"
