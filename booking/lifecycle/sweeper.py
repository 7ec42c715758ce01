"""The sweeper: one background loop per worker that keeps the lifecycle moving.

Every worker runs `sweep_forever`; a short Redis lock lets one of them do each round. A round
expires lapsed holds, gives back seats whose grab or cancel never finished (a worker died
mid-way), and hands free seats to residents waiting.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

import asyncpg
from redis.commands.core import AsyncScript

from booking.core.observability import SWEEPER_ROUNDS
from booking.ledger.promotions import promote_waiting
from booking.lifecycle.holds import expire_due_holds
from booking.seats import SeatGate
from booking.seats.reconcile import (
    ALL_COURSE_IDS,
    COURSES_WITH_WAITERS,
    FIGURES_CHUNK,
    compare_all,
    reconcile_all,
)

log = logging.getLogger("booking.sweeper")

RECONCILER_LOCK = "booking:reconciler-lock"
FULL_ROUND_MARK = "booking:reconciler-full-round"
FULL_ROUND_EVERY = 10  # rounds
# The start of a round: take the lock (ARGV[1] our token, for at most ARGV[2] ms) and say when,
# by Redis's clock (0: another worker holds it). Pace and lapse are both judged by that clock.
_TAKE_ROUND = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local clock = redis.call('TIME')
return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
# While a round runs: keep the lock for ARGV[2] ms more if it is still ours (ARGV[1]).
_RENEW_ROUND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# At the end of a round: if the lock is still ours, keep it until the round's pace is over
# (ARGV[2], ms since the epoch by Redis's clock), or drop it if that moment has passed.
_END_ROUND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if tonumber(ARGV[2]) > now_ms then
    redis.call('PEXPIREAT', KEYS[1], ARGV[2])
else
    redis.call('DEL', KEYS[1])
end
return 1
"""


async def sweep_forever(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                        interval_s: float) -> None:
    """Give back seats whose grab or cancel never finished (a worker died mid-way).

    Every worker runs this loop; a Redis lock lets one of them do each round. A round
    expires lapsed holds, syncs the courses holding stale pending marks (every tenth round or
    so is a full one, which compares every course's figures in the gate with the ledger's and
    syncs those that disagree: a safety net for whatever a pending mark did not cover), and
    hands free seats to residents waiting (see `_sweep_round`).

    The lock is held for the whole round (renewed while it runs) and then until 0.9 intervals
    after the round began, so rounds keep their pace across workers, and whoever holds the lock
    knows that no round is running (tests pause the sweeper that way). A worker that dies
    mid-round stops renewing: its lock lapses after the pending timeout."""
    take_round = gate.redis.register_script(_TAKE_ROUND)
    renew_round = gate.redis.register_script(_RENEW_ROUND)
    end_round = gate.redis.register_script(_END_ROUND)
    while True:
        await asyncio.sleep(interval_s)
        try:
            token = uuid.uuid4().hex
            longest_ms = int(max(interval_s * 900, pending_timeout_s * 1000))
            started_ms = int(await take_round(keys=[RECONCILER_LOCK], args=[token, longest_ms]))
            if not started_ms:
                SWEEPER_ROUNDS.labels("skipped").inc()
                continue
            SWEEPER_ROUNDS.labels("ran").inc()
            try:
                held = _LockHeld(renew_round, token, longest_ms)
                await held.run(_sweep_round(pool, gate, pending_timeout_s, interval_s))
            finally:
                paced_until_ms = started_ms + int(interval_s * 900)
                await end_round(keys=[RECONCILER_LOCK], args=[token, paced_until_ms])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reconciler round failed: %s", exc)


class _LockHeld:
    """Runs a round while renewing its lock every third of the lock's life; a round whose lock
    was lost anyway (Redis lost its data, say) is stopped, since another may have begun."""

    def __init__(self, renew: AsyncScript, token: str, life_ms: int) -> None:
        self._renew = renew
        self._token = token
        self._life_ms = life_ms

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self._life_ms / 3000)
                if not task.done() and not await self._renew(keys=[RECONCILER_LOCK],
                                                              args=[self._token, self._life_ms]):
                    log.warning("reconciler round stopped: its lock was lost")
                    return
            task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _sweep_round(pool: asyncpg.Pool, gate: SeatGate, pending_timeout_s: float,
                       interval_s: float) -> None:
    """Expire lapsed holds, reconcile the courses that need it, promote waiters to free seats.

    A round's syncs are for the courses that need one, not for every course: those holding a
    pending mark older than the pending timeout (a writer died), and in a full round (about
    every FULL_ROUND_EVERY rounds, a safety net for what no mark covers) those whose figures in
    the gate disagree with the ledger's (reconcile.compare_all). Finding the stale marks still
    reads every course (one small read-only script each, in chunks): only the gate knows where
    its marks are. Promotions are looked for in the courses the ledger has waiters for (and, in
    a full round, those the gate has waiters for)."""
    expired = await expire_due_holds(pool, gate)
    if expired:
        log.info("expired %d unpaid holds", expired)
    full = await gate.redis.set(FULL_ROUND_MARK, "1", nx=True,
                                px=int(interval_s * FULL_ROUND_EVERY * 1000))
    waiting_in_gate: list[int] = []
    if full:
        compared = await compare_all(pool, gate, pending_timeout_s)
        course_ids, waiting_in_gate = compared.out_of_line, compared.waiting_in_gate
    else:
        course_ids = await _with_stale_pending(pool, gate, pending_timeout_s)
    if course_ids:
        report = await reconcile_all(pool, gate, pending_timeout_s, course_ids)
        if report.given_back or report.restored:
            log.info("reconciler (%s round) gave back %d seats and restored %d on %d courses",
                     "full" if full else "stale", report.given_back, report.restored,
                     report.courses)
    waited_for = {row[0] for row in await pool.fetch(COURSES_WITH_WAITERS)}
    for course_id in await gate.courses_to_promote(sorted(waited_for.union(waiting_in_gate))):
        await promote_waiting(pool, gate, course_id)


async def _with_stale_pending(pool: asyncpg.Pool, gate: SeatGate,
                              pending_timeout_s: float) -> list[int]:
    """The courses holding a pending mark older than the pending timeout, by Redis's clock (the
    one that stamped the marks), looked at FIGURES_CHUNK courses per pipeline."""
    all_ids = [row[0] for row in await pool.fetch(ALL_COURSE_IDS)]
    stale: list[int] = []
    for start in range(0, len(all_ids), FIGURES_CHUNK):
        stale += await gate.courses_with_stale_pending(all_ids[start:start + FIGURES_CHUNK],
                                                       int(pending_timeout_s * 1000))
    return stale
