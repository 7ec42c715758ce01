"""Group commit: confirmed grabs of one process share one multi-row INSERT.

Every grab that the gate said yes to waits on `BookingLedger.record`. A few flusher tasks take
whatever has queued up and write it in one statement (one transaction), so under a rush the
batches grow by themselves and Postgres sees one small transaction per batch instead of one per
grab. A row that a batch cannot take (a constraint said no) is retried alone, so one bad row
never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from booking.seats import SeatGate

log = logging.getLogger("booking.ledger")

INSERT_MANY = """
INSERT INTO bookings (id, course_id, resident_id, created_at)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[])
"""
INSERT_ONE = "INSERT INTO bookings (id, course_id, resident_id, created_at) VALUES ($1, $2, $3, $4)"


class CommitFailed(Exception):
    """The row was not committed. `certain` is False when the outcome is unknown (the
    connection broke mid-commit): then the seat is left pending for the reconciler to judge."""

    def __init__(self, reason: str, *, certain: bool = True, constraint: str | None = None):
        super().__init__(reason)
        self.certain = certain
        self.constraint = constraint


@dataclass(slots=True)
class NewBooking:
    id: str
    course_id: int
    resident_id: str
    created_at: datetime
    queued_at: float = 0.0
    done: asyncio.Future[None] | None = field(default=None, repr=False)


class BookingLedger:
    def __init__(self, pool: asyncpg.Pool, gate: SeatGate, *, flushers: int = 3,
                 max_batch: int = 1000, deadline_s: float = 10.0) -> None:
        self._pool = pool
        self._gate = gate
        self._flushers = flushers
        self._max_batch = max_batch
        self._deadline_s = deadline_s
        self._queue: list[NewBooking] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_forever()) for _ in range(self._flushers)]

    async def close(self) -> None:
        while self._queue:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def record(self, booking: NewBooking) -> None:
        """Return once the booking row is committed; raise CommitFailed otherwise."""
        loop = asyncio.get_running_loop()
        booking.done = loop.create_future()
        booking.queued_at = loop.time()
        self._queue.append(booking)
        self._wakeup.set()
        await booking.done

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if not self._queue:
                self._wakeup.clear()
            if batch:
                try:
                    await self._flush(batch)
                except Exception as exc:  # never let a flusher die
                    log.exception("flush failed")
                    _fail(batch, CommitFailed(f"unexpected: {exc}", certain=False))

    async def _flush(self, batch: list[NewBooking]) -> None:
        cutoff = asyncio.get_running_loop().time() - self._deadline_s
        late = [b for b in batch if b.queued_at < cutoff]
        _fail(late, CommitFailed("waited too long for the database"))
        batch = [b for b in batch if b.queued_at >= cutoff]
        if not batch:
            return
        try:
            async with self._pool.acquire() as conn:
                try:
                    await conn.execute(INSERT_MANY, [b.id for b in batch],
                                       [b.course_id for b in batch],
                                       [b.resident_id for b in batch],
                                       [b.created_at for b in batch])
                    committed = batch
                except asyncpg.IntegrityConstraintViolationError:
                    committed = await self._insert_one_by_one(conn, batch)
        except asyncpg.PostgresError as exc:
            _fail(batch, CommitFailed(f"{type(exc).__name__}: {exc}"))
            return
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            _fail(batch, CommitFailed(f"{type(exc).__name__}: {exc}", certain=False))
            return
        self.batches += 1
        self.rows += len(committed)
        for booking in committed:
            _resolve(booking)
        try:
            await self._gate.settle((b.course_id, b.resident_id) for b in committed)
        except Exception as exc:  # the reconciler clears pending marks too
            log.warning("could not clear pending marks: %s", exc)

    async def _insert_one_by_one(self, conn: asyncpg.Connection,
                                 batch: list[NewBooking]) -> list[NewBooking]:
        committed = []
        for booking in batch:
            try:
                await conn.execute(INSERT_ONE, booking.id, booking.course_id,
                                   booking.resident_id, booking.created_at)
                committed.append(booking)
            except asyncpg.IntegrityConstraintViolationError as exc:
                name = getattr(exc, "constraint_name", None)
                _fail([booking], CommitFailed(f"refused by {name}", constraint=name))
        return committed


def _resolve(booking: NewBooking) -> None:
    if booking.done is not None and not booking.done.done():
        booking.done.set_result(None)


def _fail(batch: list[NewBooking], error: CommitFailed) -> None:
    for booking in batch:
        if booking.done is not None and not booking.done.done():
            booking.done.set_exception(error)
