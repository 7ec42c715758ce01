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
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from booking.core.batching import MicroBatcher
from booking.core.observability import COMMIT_BATCH_ROWS
from booking.ledger.promotions import free_seat
from booking.ledger.states import Status, new_status
from booking.seats import SeatGate

log = logging.getLogger("booking.ledger.commit")

# How long a grab may wait for its row to be committed, queue and statement together, unless
# the app sets less (it does: a quarter of the pending timeout, see booking/app.py).
DEFAULT_DEADLINE_S = 10.0

INSERT_MANY = """
INSERT INTO bookings (id, course_id, resident_id, created_at, status, expires_at)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::timestamptz[])
"""
INSERT_ONE = """
INSERT INTO bookings (id, course_id, resident_id, created_at, status, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""


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
    expires_at: datetime | None = None  # a hold of a paid course; None: confirmed at once
    queued_at: float = 0.0

    @property
    def status(self) -> Status:
        return new_status(self.expires_at)


class BookingLedger:
    def __init__(self, pool: asyncpg.Pool, gate: SeatGate, *, flushers: int = 3,
                 max_batch: int = 1000, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self._pool = pool
        self._gate = gate
        self._deadline_s = deadline_s
        self._batcher: MicroBatcher[NewBooking, None] = MicroBatcher(
            self._write, flushers=flushers, max_batch=max_batch)

    async def close(self) -> None:
        await self._batcher.close()

    async def record(self, booking: NewBooking) -> None:
        """Return once the booking row is committed; raise CommitFailed otherwise. A write that
        surely failed has given its seat back (to the first resident waiting, if any) by then;
        one whose outcome is unknown leaves it pending for the reconciler to judge."""
        booking.queued_at = asyncio.get_running_loop().time()
        try:
            await self._batcher.submit(booking)
        except CommitFailed as exc:
            if exc.certain:
                await self._give_back(booking)
            raise

    async def _give_back(self, booking: NewBooking) -> None:
        try:
            await free_seat(self._pool, self._gate, booking.course_id, booking.resident_id,
                            booking.id)
        except Exception as exc:  # the reconciler gives it back after the pending timeout
            log.warning("could not give back seat of %s: %s", booking.id, exc)

    async def _write(self, batch: list[NewBooking]) -> list[CommitFailed | None]:
        """One INSERT for the batch; the outcome of each row, in order."""
        outcome: dict[str, CommitFailed | None] = {}
        cutoff = asyncio.get_running_loop().time() - self._deadline_s
        for booking in batch:
            if booking.queued_at < cutoff:
                outcome[booking.id] = CommitFailed("waited too long for the database")
        todo = [b for b in batch if b.id not in outcome]
        if todo:
            outcome.update(await self._insert(todo))
        committed = [b for b in todo if outcome[b.id] is None]
        COMMIT_BATCH_ROWS.observe(len(todo))
        if committed:
            try:
                await self._gate.settle((b.course_id, b.resident_id) for b in committed)
            except Exception as exc:  # the reconciler clears pending marks too
                log.warning("could not clear pending marks: %s", exc)
        return [outcome[b.id] for b in batch]

    async def _insert(self, batch: list[NewBooking]) -> dict[str, CommitFailed | None]:
        oldest = min(b.queued_at for b in batch)
        budget_s = oldest + self._deadline_s - asyncio.get_running_loop().time()
        try:
            conn = await self._pool.acquire(timeout=max(budget_s, 0.05))
        except Exception as exc:  # no connection, so surely nothing was written
            failed = CommitFailed(f"no connection: {type(exc).__name__}: {exc}")
            return dict.fromkeys((b.id for b in batch), failed)
        try:
            try:
                await conn.execute(INSERT_MANY, [b.id for b in batch],
                                   [b.course_id for b in batch],
                                   [b.resident_id for b in batch],
                                   [b.created_at for b in batch],
                                   [b.status for b in batch],
                                   [b.expires_at for b in batch])
                return dict.fromkeys((b.id for b in batch), None)
            except asyncpg.IntegrityConstraintViolationError:
                return await self._insert_one_by_one(conn, batch)
            finally:
                await self._pool.release(conn)
        except asyncpg.PostgresError as exc:
            failed = CommitFailed(f"{type(exc).__name__}: {exc}")
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                TimeoutError) as exc:
            failed = CommitFailed(f"{type(exc).__name__}: {exc}", certain=False)
        return dict.fromkeys((b.id for b in batch), failed)

    async def _insert_one_by_one(self, conn: asyncpg.Connection,
                                 batch: list[NewBooking]) -> dict[str, CommitFailed | None]:
        outcome: dict[str, CommitFailed | None] = {}
        for booking in batch:
            try:
                await conn.execute(INSERT_ONE, booking.id, booking.course_id,
                                   booking.resident_id, booking.created_at, booking.status,
                                   booking.expires_at)
                outcome[booking.id] = None
            except asyncpg.IntegrityConstraintViolationError as exc:
                name = getattr(exc, "constraint_name", None)
                outcome[booking.id] = CommitFailed(f"refused by {name}", constraint=name)
        return outcome
