"""Abuse limits on the grab path: per resident and per client address, atomic in Redis.

Each limit is a fixed-window counter (ratelimit.lua) on a key of its own hash tag, so it works
on Redis Cluster. The checks of concurrent requests share one pipeline with the micro-batcher,
so a flood of refused requests costs a fraction of a round trip each and no seat decision.

A subject (resident or address) the counter said is over its limit is remembered by the process
until its window ends: its next requests are refused from memory, without Redis. That changes
no answer (a fixed window refuses everything until it ends, and the counter's key lapses then
whatever it holds) and makes an abuser's flood cost this process almost nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from booking.core.batching import MicroBatcher
from booking.seats.scripts import load_script, run_many


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int  # 0: no limit
    window_s: float


class RateLimiter:
    def __init__(self, redis: Redis, per_resident: Limit, per_address: Limit) -> None:
        self._redis = redis
        self._script = load_script(redis, "booking.seats", "ratelimit")
        self._limits = [(prefix, limit.requests, int(limit.window_s * 1000))
                        for prefix, limit in (("r", per_resident), ("a", per_address))
                        if limit.requests]
        self._checks: MicroBatcher[tuple[str, str], float] = MicroBatcher(
            self._check_many, flushers=1, max_batch=512)
        self._over: dict[str, float] = {}  # counter key -> when its window ends (monotonic)

    async def close(self) -> None:
        await self._checks.close()

    async def wait_s(self, resident_id: str, address: str) -> float:
        """0 when this grab may go ahead, else how many seconds to wait."""
        if not self._limits:
            return 0.0
        remembered = self._remembered_wait(resident_id, address)
        if remembered:
            return remembered
        return await self._checks.submit((resident_id, address))

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

    async def _check_many(self, requests: list[tuple[str, str]]) -> list[float | Exception]:
        calls = []
        for resident_id, address in requests:
            for prefix, count, window_ms in self._limits:
                subject = address if prefix == "a" else resident_id
                calls.append(((_key(prefix, subject),), (count, window_ms)))
        replies = await run_many(self._redis, self._script, calls)
        for ((key,), _), reply in zip(calls, replies, strict=True):
            if not isinstance(reply, Exception) and int(reply) > 0:
                self._remember(key, int(reply))
        per_request = len(self._limits)
        waits: list[float | Exception] = []
        for i in range(len(requests)):
            mine = replies[i * per_request:(i + 1) * per_request]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            waits.append(failed or max(int(r) for r in mine) / 1000)  # type: ignore[arg-type]
        return waits


_OVER_LIMIT = 100_000  # remembered subjects before the lapsed ones are dropped


def _key(prefix: str, subject: str) -> str:
    """A subject's counter: its own hash tag, so each lives in one slot of a cluster."""
    return f"rate:{{{prefix}:{subject}}}"
