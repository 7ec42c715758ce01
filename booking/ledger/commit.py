"""Group commit: confirmed grabs of one process share one multi-row INSERT.

Every grab that the gate said yes to waits on `BookingLedger.record`. A few flusher tasks take
whatever has queued up and write it in one statement (one transaction), so under a rush the
batches grow by themselves and Postgres sees one small transaction per batch instead of one per
grab. A row that a batch cannot take (a constraint said no) is retried alone, so one bad row
never fails its neighbours.

A committed row's grab is answered before its pending mark in the gate is cleared: the answer
needs the row, not the mark. The marks of a batch are cleared right after, in the background,
which keeps one Redis round trip out of every 201 (and out of the flushers' loop). A mark left
behind (the process died, Redis did not answer) only keeps the reconciler from judging the seat
until the pending timeout; it then finds the row and keeps the seat.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from booking.core.batching import MicroBatcher
from booking.core.observability import COMMIT_BATCH_ROWS
from booking.ledger.promotions import CONNECTION_LOST, free_seat
from booking.ledger.states import Status
from booking.seats import SeatGate

log = logging.getLogger("booking.ledger.commit")

# How long a grab may wait for its row to be committed, queue and statement together, unless
# the app sets less (it does: a quarter of the pending timeout, see booking/app.py).
DEFAULT_DEADLINE_S = 10.0

# Postgres decides what a new row is, as it does for swaps and promotions: `held` with an expiry
# of now() + the course's hold on a paid course, `confirmed` otherwise. Its clock and its course
# row, not the worker's clock or the gate's copy of the price (one clock for every hold).
INSERT_MANY = """
INSERT INTO bookings (id, course_id, resident_id, status, expires_at)
SELECT n.id, n.course_id, n.resident_id, new_booking_status(hold.s), new_booking_expiry(hold.s)
FROM unnest($1::uuid[], $2::bigint[], $3::text[])
     WITH ORDINALITY AS n(id, course_id, resident_id, i)
JOIN courses c ON c.id = n.course_id
CROSS JOIN LATERAL course_hold_s(c.price_cents, c.hold_minutes) AS hold(s)
ORDER BY n.i  -- in the order they queued
RETURNING id::text AS id, status, created_at, expires_at
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
    """A booking the gate gave a seat to, on its way to Postgres."""

    id: str
    course_id: int
    resident_id: str
    queued_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Written:
    """A committed row as Postgres wrote it (a hold's expiry by Postgres's clock)."""

    status: Status
    created_at: datetime
    expires_at: datetime | None  # a hold of a paid course; None: confirmed at once


Outcome = Written | CommitFailed


def _failure(exc: Exception) -> CommitFailed:
    """What a failed statement means for its rows: an error Postgres answered rolled the
    statement back (surely not written); a lost connection leaves the outcome unknown."""
    return CommitFailed(f"{type(exc).__name__}: {exc}",
                        certain=not isinstance(exc, CONNECTION_LOST))


class BookingLedger:
    def __init__(self, pool: asyncpg.Pool, gate: SeatGate, *, flushers: int = 3,
                 max_batch: int = 1000, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self._pool = pool
        self._gate = gate
        self._deadline_s = deadline_s
        self._batcher: MicroBatcher[NewBooking, Written] = MicroBatcher(
            self._write, flushers=flushers, max_batch=max_batch)
        self._settling: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self._batcher.close()
        await self.settled()

    async def settled(self) -> None:
        """Return once the pending marks of every row committed so far are cleared (or the
        attempt to clear them has failed)."""
        while self._settling:
            await asyncio.gather(*self._settling)

    async def record(self, booking: NewBooking) -> Written:
        """Return the row once it is committed; raise CommitFailed otherwise. A write that
        surely failed has given its seat back (to the first resident waiting, if any) by then;
        one whose outcome is unknown leaves it pending for the reconciler to judge."""
        booking.queued_at = asyncio.get_running_loop().time()
        try:
            return await self._batcher.submit(booking)
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

    def _late(self, booking: NewBooking, budgets: int = 1) -> bool:
        """Queued longer than `budgets` deadlines ago: too late to start writing it."""
        waited = asyncio.get_running_loop().time() - booking.queued_at
        return waited > self._deadline_s * budgets

    async def _write(self, batch: list[NewBooking]) -> list[Outcome]:
        """One INSERT for the batch; the outcome of each row, in order."""
        outcome: dict[str, Outcome] = {}
        for booking in batch:
            if self._late(booking):
                outcome[booking.id] = CommitFailed("waited too long for the database")
        todo = [b for b in batch if b.id not in outcome]
        if todo:
            outcome.update(await self._insert(todo))
        committed = [b for b in todo if isinstance(outcome[b.id], Written)]
        COMMIT_BATCH_ROWS.observe(len(todo))
        if committed:
            task = asyncio.create_task(self._settle(committed))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
        return [outcome[b.id] for b in batch]

    async def _settle(self, committed: list[NewBooking]) -> None:
        try:
            async with asyncio.timeout(0.5):
                await self._gate.settle((b.course_id, b.resident_id, b.id) for b in committed)
        except Exception as exc:  # the reconciler clears pending marks too
            log.warning("could not clear pending marks: %s", exc)

    async def _insert(self, batch: list[NewBooking]) -> dict[str, Outcome]:
        oldest = min(b.queued_at for b in batch)
        budget_s = oldest + self._deadline_s - asyncio.get_running_loop().time()
        try:
            conn = await self._pool.acquire(timeout=max(budget_s, 0.05))
        except Exception as exc:  # no connection, so surely nothing was written
            failed = CommitFailed(f"no connection: {type(exc).__name__}: {exc}")
            return dict.fromkeys((b.id for b in batch), failed)
        try:
            try:
                return await _insert_rows(conn, batch)
            except asyncpg.IntegrityConstraintViolationError:
                return await self._insert_one_by_one(conn, batch)
        except (asyncpg.PostgresError, *CONNECTION_LOST) as exc:
            return dict.fromkeys((b.id for b in batch), _failure(exc))
        finally:
            await self._pool.release(conn)

    async def _insert_one_by_one(self, conn: asyncpg.Connection,
                                 batch: list[NewBooking]) -> dict[str, Outcome]:
        """Each row alone, after a constraint refused the batch, so a bad row never fails its
        neighbours. Every outcome learnt is kept: a row failing any other way (a statement
        timeout, a deadlock) fails alone, as its statement was rolled back; once the connection
        is lost, the rows not yet sent fail (surely not written) and the rest stand. A row is
        started only within two deadlines of its queueing, so every write is over well before
        the reconciler may judge its seat stale."""
        outcome: dict[str, Outcome] = {}
        for i, booking in enumerate(batch):
            if self._late(booking, budgets=2):
                outcome[booking.id] = CommitFailed("waited too long for the database")
                continue
            try:
                outcome.update(await _insert_rows(conn, [booking]))
            except asyncpg.IntegrityConstraintViolationError as exc:
                name = getattr(exc, "constraint_name", None)
                outcome[booking.id] = CommitFailed(f"refused by {name}", constraint=name)
            except CONNECTION_LOST as exc:
                outcome[booking.id] = _failure(exc)
                unsent = CommitFailed("not written: the connection was lost")
                outcome.update(dict.fromkeys((b.id for b in batch[i + 1:]), unsent))
                break
            except asyncpg.PostgresError as exc:
                outcome[booking.id] = _failure(exc)
        return outcome


async def _insert_rows(conn: asyncpg.Connection,
                       rows: list[NewBooking]) -> dict[str, Outcome]:
    """One INSERT of the rows (one transaction); what Postgres wrote for each."""
    written = await conn.fetch(INSERT_MANY, [b.id for b in rows], [b.course_id for b in rows],
                               [b.resident_id for b in rows])
    outcome: dict[str, Outcome] = {
        row["id"]: Written(row["status"], row["created_at"], row["expires_at"])
        for row in written}
    for booking in rows:  # the gate seated a course Postgres does not have
        outcome.setdefault(booking.id, CommitFailed("no such course"))
    return outcome
