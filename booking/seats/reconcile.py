"""Keep the gate (Redis) in agreement with the ledger (Postgres).

`reconcile_course` is the one way a course gets into Redis: on creation, after a change, after
Redis lost its data (the first grab finds the course missing) and for stale pending seats whose
writer died. The order matters: the gate is looked at (its settled holders and the course's
version) *before* Postgres is read, so a grab committed in between is never mistaken for a stale
one, and a change applied to the gate in between makes the sync change nothing and read again
instead of writing back what it read before that change (see sync.lua).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from booking.core.observability import RECONCILER_SEATS
from booking.seats.gate import CourseGateState, SeatGate, SyncResult

log = logging.getLogger("booking.seats.reconcile")

COURSE_STATE = """
SELECT capacity, status, (extract(epoch FROM sales_open_at) * 1000)::bigint AS opens_at_ms,
       course_hold_s(price_cents, hold_minutes) AS hold_s
FROM courses WHERE id = $1
"""
ACTIVE_BOOKINGS = """
SELECT resident_id, id::text FROM bookings
WHERE course_id = $1 AND booking_active(status)
"""
WAITING = "SELECT resident_id, id FROM waitlist WHERE course_id = $1 AND status = 'waiting'"
ALL_COURSE_IDS = "SELECT id FROM courses ORDER BY id"
# A sync finding the gate changed since it looked reads again, this many times at most (each
# retry needs yet another change to the course within one read of it).
SYNC_ATTEMPTS = 5


async def read_ledger(pool: asyncpg.Pool, course_id: int) -> CourseGateState | None:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        course = await conn.fetchrow(COURSE_STATE, course_id)
        if course is None:
            return None
        rows = await conn.fetch(ACTIVE_BOOKINGS, course_id)
        waiting = await conn.fetch(WAITING, course_id)
    return CourseGateState(course["capacity"], course["status"], course["opens_at_ms"],
                           {row[0]: row[1] for row in rows}, course["hold_s"],
                           {row[0]: row[1] for row in waiting})


async def reconcile_course(pool: asyncpg.Pool, gate: SeatGate, course_id: int,
                           pending_timeout_s: float) -> SyncResult | None:
    """Bring one course's gate in line with Postgres; None when Postgres has no such course.
    A sync that found the gate changed after it looked (a newer change applied meanwhile)
    wrote nothing and is done again from a fresh read."""
    for _ in range(SYNC_ATTEMPTS):
        seen = await gate.snapshot(course_id)
        ledger = await read_ledger(pool, course_id)
        if ledger is None:
            return None
        result = await gate.sync(course_id, ledger, seen, int(pending_timeout_s * 1000))
        if result.applied:
            break
    else:
        log.warning("course %s kept changing while it was synced; left for the next round",
                    course_id)
    if result.given_back:
        RECONCILER_SEATS.labels("given_back").inc(result.given_back)
    if result.restored:
        RECONCILER_SEATS.labels("restored").inc(result.restored)
    return result


@dataclass(slots=True)
class ReconcileReport:
    courses: int = 0
    given_back: int = 0
    restored: int = 0
    quotas: int = 0  # residents whose term-cap quota was rebuilt (booking/ops/tools.py)


async def reconcile_all(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                        course_ids: list[int] | None = None) -> ReconcileReport:
    if course_ids is None:
        course_ids = [row[0] for row in await pool.fetch(ALL_COURSE_IDS)]
    report = ReconcileReport()
    for course_id in course_ids:
        result = await reconcile_course(pool, gate, course_id, pending_timeout_s)
        if result is not None:
            report.courses += 1
            report.given_back += result.given_back
            report.restored += result.restored
    return report


class CourseLoader:
    """Loads a course into the gate, however many callers ask at once.

    Every caller is answered by a load that began reading Postgres after it asked, so a change
    committed just before (a PATCH, then its reload) is never answered by a snapshot taken
    before that change. Callers that ask while a load is reading share the one load queued
    behind it; one load per course runs at a time."""

    def __init__(self, pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float) -> None:
        self._pool = pool
        self._gate = gate
        self._pending_timeout_s = pending_timeout_s
        self._queued: dict[int, asyncio.Future[SyncResult | None]] = {}  # not reading yet
        self._running: dict[int, asyncio.Future[SyncResult | None]] = {}

    async def load(self, course_id: int) -> SyncResult | None:
        queued = self._queued.get(course_id)
        if queued is None:
            queued = asyncio.ensure_future(
                self._load_after(self._running.get(course_id), course_id))
            self._queued[course_id] = queued
        return await asyncio.shield(queued)

    async def _load_after(self, previous: asyncio.Future[SyncResult | None] | None,
                          course_id: int) -> SyncResult | None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is for its own callers
        this = self._queued.pop(course_id)  # reading from here on: later callers queue anew
        self._running[course_id] = this
        try:
            return await reconcile_course(self._pool, self._gate, course_id,
                                          self._pending_timeout_s)
        finally:
            if self._running.get(course_id) is this:
                del self._running[course_id]
