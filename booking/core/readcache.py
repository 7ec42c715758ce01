"""A short-lived cache for public reads (course lists and pages), so a crowd refreshing the
list costs Postgres one query per second per worker instead of one per refresh.

Only the descriptive rows are cached; seats_left always comes live from the gate. A change
made through this worker clears the cache at once; other workers see it within the TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

MAX_ENTRIES = 10_000


class ReadCache:
    def __init__(self, ttl_s: float = 1.0) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._loading: dict[Hashable, asyncio.Future[Any]] = {}

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value for `key`, or `load()`'s, shared by everyone asking meanwhile."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        running = self._loading.get(key)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(load())
        self._loading[key] = task
        try:
            value = await asyncio.shield(task)
        finally:
            self._loading.pop(key, None)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (now + self._ttl_s, value)
        return value
