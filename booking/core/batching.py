"""Micro-batching: many concurrent callers, one round trip per batch.

Callers `submit` an item and await its result. A few flusher tasks take everything queued so
far and hand it to `flush`, which returns one result (or exception) per item. While flushes
are in flight new items queue up, so batches grow with the load by themselves and cost no
waiting when the service is quiet. The gate uses it for Redis (one pipeline of script calls
per batch) and the ledger for Postgres (one multi-row INSERT per batch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("booking.core.batching")

Item = TypeVar("Item")
Result = TypeVar("Result")
Flush = Callable[[list[Item]], Awaitable[Sequence["Result | BaseException"]]]


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, flush: Flush[Item, Result], *, flushers: int = 3,
                 max_batch: int = 1000) -> None:
        self._flush = flush
        self._flushers = flushers
        self._max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_forever())
                       for _ in range(self._flushers)]

    async def close(self) -> None:
        """Finish what is queued, then stop the flushers."""
        while self._queue:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, item: Item) -> Result:
        if not self._tasks:
            self.start()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wakeup.set()
        return await future

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if not self._queue:
                self._wakeup.clear()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:  # a failed round trip fails its whole batch, never a flusher
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class ShardedBatcher(Generic[Item, Result]):
    """A MicroBatcher per shard (`shard_of(item)`, e.g. the Redis Cluster node serving the
    item's keys): a shard whose round trip hangs, as a dead primary's does until its replica
    takes over, holds up its own callers only. With one shard it is one MicroBatcher."""

    def __init__(self, flush: Flush[Item, Result], shard_of: Callable[[Item], Hashable], *,
                 flushers: int = 3, max_batch: int = 1000) -> None:
        self._flush = flush
        self._shard_of = shard_of
        self._options = {"flushers": flushers, "max_batch": max_batch}
        self._batchers: dict[Hashable, MicroBatcher[Item, Result]] = {}

    async def submit(self, item: Item) -> Result:
        shard = self._shard_of(item)
        batcher = self._batchers.get(shard)
        if batcher is None:
            batcher = self._batchers[shard] = MicroBatcher(self._flush, **self._options)
        return await batcher.submit(item)

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
