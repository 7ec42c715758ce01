"""Abuse limits on the grab path: per resident and per client address, atomic in Redis.

Each limit is a fixed-window counter (ratelimit.lua) on a key of its own hash tag, so it works
on Redis Cluster. The checks of concurrent requests share one pipeline with the micro-batcher,
so a flood of refused requests costs a fraction of a round trip each and no seat decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from booking.batching import MicroBatcher
from booking.scripts import load_script, run_many


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int  # 0: no limit
    window_s: float


class RateLimiter:
    def __init__(self, redis: Redis, per_resident: Limit, per_address: Limit) -> None:
        self._redis = redis
        self._script = load_script(redis, "booking", "ratelimit")
        self._limits = (per_resident, per_address)
        self._checks: MicroBatcher[tuple[str, str], float] = MicroBatcher(
            self._check_many, flushers=4, max_batch=256)

    @property
    def enabled(self) -> bool:
        return any(limit.requests for limit in self._limits)

    async def close(self) -> None:
        await self._checks.close()

    async def wait_s(self, resident_id: str, address: str) -> float:
        """0 when this grab may go ahead, else how many seconds to wait."""
        if not self.enabled:
            return 0.0
        return await self._checks.submit((resident_id, address))

    async def _check_many(self, requests: list[tuple[str, str]]) -> list[float | Exception]:
        calls = []
        for resident_id, address in requests:
            for key, limit in ((f"rate:{{r:{resident_id}}}", self._limits[0]),
                               (f"rate:{{a:{address}}}", self._limits[1])):
                calls.append(((key,), (limit.requests, int(limit.window_s * 1000))))
        replies = await run_many(self._redis, self._script, calls)
        waits: list[float | Exception] = []
        for resident_reply, address_reply in zip(replies[::2], replies[1::2], strict=True):
            failed = next((r for r in (resident_reply, address_reply)
                           if isinstance(r, Exception)), None)
            waits.append(failed or max(int(resident_reply), int(address_reply)) / 1000)
        return waits
