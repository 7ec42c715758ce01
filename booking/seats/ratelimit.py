"""Abuse limits on the grab path: per resident and per client address, atomic in Redis.

Each limit is a fixed-window counter (ratelimit.lua) on a key of its own hash tag, so it works
on Redis Cluster. The checks of concurrent requests share one pipeline with the micro-batcher,
so a flood of refused requests costs a fraction of a round trip each and no seat decision.
"""

from __future__ import annotations

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

    async def close(self) -> None:
        await self._checks.close()

    async def wait_s(self, resident_id: str, address: str) -> float:
        """0 when this grab may go ahead, else how many seconds to wait."""
        if not self._limits:
            return 0.0
        return await self._checks.submit((resident_id, address))

    async def _check_many(self, requests: list[tuple[str, str]]) -> list[float | Exception]:
        calls = []
        for resident_id, address in requests:
            for prefix, count, window_ms in self._limits:
                subject = address if prefix == "a" else resident_id
                calls.append(((f"rate:{{{prefix}:{subject}}}",), (count, window_ms)))
        replies = await run_many(self._redis, self._script, calls)
        per_request = len(self._limits)
        waits: list[float | Exception] = []
        for i in range(len(requests)):
            mine = replies[i * per_request:(i + 1) * per_request]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            waits.append(failed or max(int(r) for r in mine) / 1000)  # type: ignore[arg-type]
        return waits
