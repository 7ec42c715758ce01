"""Keep the gate (Redis) in agreement with the ledger (Postgres).

`reconcile_course` is the one way a course gets into Redis: on creation, after a change, after
Redis lost its data (the first grab finds the course missing) and for stale pending seats whose
writer died. The order matters: the settled holders are read from Redis *before* Postgres, so a
grab committed in between is never mistaken for a stale one (see sync.lua).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from booking.core.observability import RECONCILER_SEATS
from booking.seats import CourseGateState, SeatGate, SyncResult

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
    """Bring one course's gate in line with Postgres; None when Postgres has no such course."""
    settled = await gate.settled_holders(course_id)
    ledger = await read_ledger(pool, course_id)
    if ledger is None:
        return None
    stale_before_ms = int((time.time() - pending_timeout_s) * 1000)
    result = await gate.sync(course_id, ledger, settled, stale_before_ms)
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
    """Loads a course into the gate once per process, however many grabs ask at once."""

    def __init__(self, pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float) -> None:
        self._pool = pool
        self._gate = gate
        self._pending_timeout_s = pending_timeout_s
        self._in_flight: dict[int, asyncio.Future[SyncResult | None]] = {}

    async def load(self, course_id: int) -> SyncResult | None:
        running = self._in_flight.get(course_id)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(
            reconcile_course(self._pool, self._gate, course_id, self._pending_timeout_s))
        self._in_flight[course_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            self._in_flight.pop(course_id, None)
