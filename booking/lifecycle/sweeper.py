"""The sweeper: one background loop per worker that keeps the lifecycle moving.

Every worker runs `sweep_forever`; a short Redis lock lets one of them do each round. A round
expires lapsed holds, gives back seats whose grab or cancel never finished (a worker died
mid-way), and hands free seats to residents waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from booking.ledger.promotions import promote_waiting
from booking.lifecycle.holds import expire_due_holds
from booking.seats import SeatGate
from booking.seats.reconcile import ALL_COURSE_IDS, reconcile_all

log = logging.getLogger("booking.sweeper")

RECONCILER_LOCK = "booking:reconciler-lock"
FULL_ROUND_MARK = "booking:reconciler-full-round"
FULL_ROUND_EVERY = 10  # rounds


async def sweep_forever(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                        interval_s: float) -> None:
    """Give back seats whose grab or cancel never finished (a worker died mid-way).

    Every worker runs this loop; a short Redis lock lets one of them do each round. A round
    expires lapsed holds, looks at the courses holding stale pending marks (every tenth round
    or so is a full one over all courses, a safety net for whatever a pending mark did not
    cover), and hands free seats to residents waiting."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if not await gate.redis.set(RECONCILER_LOCK, "1", nx=True,
                                        px=int(interval_s * 900)):
                continue
            await _sweep_round(pool, gate, pending_timeout_s, interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reconciler round failed: %s", exc)


async def _sweep_round(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                       interval_s: float) -> None:
    expired = await expire_due_holds(pool, gate)
    if expired:
        log.info("expired %d unpaid holds", expired)
    all_ids = [row[0] for row in await pool.fetch(ALL_COURSE_IDS)]
    course_ids = all_ids
    full = await gate.redis.set(FULL_ROUND_MARK, "1", nx=True,
                                px=int(interval_s * FULL_ROUND_EVERY * 1000))
    if not full:
        stale_before_ms = int((time.time() - pending_timeout_s) * 1000)
        course_ids = await gate.courses_with_stale_pending(course_ids, stale_before_ms)
    if course_ids:
        report = await reconcile_all(pool, gate, pending_timeout_s, course_ids)
        if report.given_back or report.restored:
            log.info("reconciler (%s round) gave back %d seats and restored %d on %d courses",
                     "full" if full else "stale", report.given_back, report.restored,
                     report.courses)
    for course_id in await gate.courses_to_promote(all_ids):
        await promote_waiting(pool, gate, course_id)
