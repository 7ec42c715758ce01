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
from dataclasses import dataclass, field

import asyncpg

from booking.core.observability import RECONCILER_SEATS
from booking.seats.gate import CourseGateState, GateFigures, SeatGate, SyncResult

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
# Courses waiting residents are queued for, as the ledger has them.
COURSES_WITH_WAITERS = \
    "SELECT DISTINCT course_id FROM waitlist WHERE status = 'waiting' ORDER BY course_id"
# A chunk of courses after id $1, with the figures the gate must agree with.
COURSE_FIGURES = """
SELECT c.id, c.capacity, c.status,
       (extract(epoch FROM c.sales_open_at) * 1000)::bigint AS opens_at_ms,
       course_hold_s(c.price_cents, c.hold_minutes) AS hold_s, c.active_bookings,
       (SELECT count(*) FROM waitlist w
        WHERE w.course_id = c.id AND w.status = 'waiting')::int AS waiting
FROM courses c WHERE c.id > $1 ORDER BY c.id LIMIT $2
"""
FIGURES_CHUNK = 500  # courses compared per query and per gate pipeline
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
                        course_ids: list[int] | None = None, *,
                        concurrency: int = 1) -> ReconcileReport:
    """Reconcile every course (or those named), `concurrency` courses at a time: courses are
    independent, and each holds one connection only while it reads the ledger."""
    if course_ids is None:
        course_ids = [row[0] for row in await pool.fetch(ALL_COURSE_IDS)]
    report = ReconcileReport()
    waiting = iter(course_ids)

    async def take_turns() -> None:
        for course_id in waiting:  # shared: each course is taken by one of them
            result = await reconcile_course(pool, gate, course_id, pending_timeout_s)
            if result is not None:
                report.courses += 1
                report.given_back += result.given_back
                report.restored += result.restored

    await asyncio.gather(*(take_turns() for _ in range(max(1, concurrency))))
    return report


@dataclass(slots=True)
class Comparison:
    """What comparing the gate's figures with the ledger's found, course by course."""

    courses: int = 0  # compared
    out_of_line: list[int] = field(default_factory=list)  # to reconcile
    waiting_in_gate: list[int] = field(default_factory=list)  # someone waits in the gate


async def compare_all(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                      chunk: int = FIGURES_CHUNK) -> Comparison:
    """Compare every course's figures in the gate with the ledger's, `chunk` courses at a time
    (one query and one gate pipeline each), without reconciling any: a course is out of line
    when the two disagree in a way no write in flight explains (see `out_of_line`)."""
    found = Comparison()
    after = 0
    while True:
        rows = await pool.fetch(COURSE_FIGURES, after, chunk)
        if not rows:
            return found
        in_gate = await gate.figures([row["id"] for row in rows], int(pending_timeout_s * 1000))
        for row, figures in zip(rows, in_gate, strict=True):
            if out_of_line(row, figures):
                found.out_of_line.append(row["id"])
            if figures.waiting:
                found.waiting_in_gate.append(row["id"])
        found.courses += len(rows)
        after = rows[-1]["id"]


def out_of_line(ledger: asyncpg.Record, gate: GateFigures) -> bool:
    """Whether a course's gate disagrees with its ledger row (COURSE_FIGURES) beyond what writes
    in flight explain. A holder pending is a grab or promotion being written (the ledger may not
    have it yet) or a cancel being written (the ledger may have dropped it already), so the
    ledger's active bookings lie between the settled holders and all holders. Waiters differ
    for a moment while one joins, leaves or is promoted. A disagreement that a write landing
    between the two reads makes up costs one needless sync, which changes nothing."""
    if gate.capacity is None:  # the gate lacks the course (Redis lost it, or never had it)
        return True
    if (gate.capacity, gate.status, gate.opens_at_ms, gate.hold_s) != (
            ledger["capacity"], ledger["status"], ledger["opens_at_ms"], ledger["hold_s"]):
        return True
    if gate.left != gate.capacity - gate.holders or gate.stale_pending:
        return True
    if not gate.holders - gate.pending <= ledger["active_bookings"] <= gate.holders:
        return True
    waiting = ledger["waiting"] if ledger["status"] == "published" else 0
    return gate.waiting != waiting


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
