"""The faults, one function each: break one thing under the rush, note when and what in `Marks`.

`scenarios(plan)` pairs each with what it must show (`Expect`) besides the shared rules, and
with the settings the service runs with for it (the plan's, unless a scenario says otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from booking.core.db import STATEMENT_TIMEOUT_MS
from booking.ledger.commit import DEFAULT_DEADLINE_S
from booking.seats import course_keys
from loadtest.faults.figures import Expect, Marks
from loadtest.faults.lab import FaultLab, Plan
from loadtest.faults.rush import Rush


async def pending_marks(redis: Redis, course_ids: list[int],
                        before_ms: float) -> list[tuple[int, str]]:
    """(course, resident) of every pending mark older than `before_ms` (epoch ms)."""
    async with redis.pipeline(transaction=False) as pipe:
        for course_id in course_ids:
            pipe.zrangebyscore(course_keys(course_id)[2], "-inf", before_ms)
        replies = await pipe.execute()
    return [(cid, who) for cid, reply in zip(course_ids, replies, strict=True) for who in reply]


Inject = Callable[[FaultLab, Rush, Marks], Awaitable[None]]


async def redis_restart(lab: FaultLab, rush: Rush, marks: Marks) -> None:
    """Redis SIGKILLed; a new, empty one on the same socket after `fault_s`."""
    marks.what = f"Redis killed (SIGKILL) and restarted empty after {lab.plan.fault_s:.0f} s"
    marks.start = time.monotonic()
    await asyncio.to_thread(lab.stores.kill_redis)
    await asyncio.sleep(lab.plan.fault_s)
    await asyncio.to_thread(lab.stores.restart_redis)
    marks.end = time.monotonic()


async def postgres_restart(lab: FaultLab, rush: Rush, marks: Marks) -> None:
    """`pg_ctl stop -m fast`, down for `fault_s`, then started again on the same socket."""
    marks.what = f"Postgres stopped (fast) and started again after {lab.plan.fault_s:.0f} s"
    marks.start = time.monotonic()
    await asyncio.to_thread(lab.stores.stop_postgres)
    marks.notes["stop took s"] = round(time.monotonic() - marks.start, 2)
    await asyncio.sleep(lab.plan.fault_s)
    restarted = time.monotonic()
    await asyncio.to_thread(lab.stores.start_postgres)
    marks.end = time.monotonic()
    marks.notes["start took s"] = round(marks.end - restarted, 2)


LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND datname = current_database()
"""


async def locks_drained(conn: asyncpg.Connection, bound_s: float = 30.0) -> float:
    """When the queue of sessions a fault left waiting for locks (behind the locked table, or
    behind slowed commits holding course rows) has drained: the fault is over from then on, not
    from the moment the lab let go. A 503 answered from that queue is the fault's."""
    deadline = time.monotonic() + bound_s
    while await conn.fetchval(LOCK_WAITERS) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return time.monotonic()


@contextlib.asynccontextmanager
async def _connection(lab: FaultLab) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(lab.stores.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def slow_postgres(lab: FaultLab, rush: Rush, marks: Marks) -> None:
    """A transaction holds ACCESS EXCLUSIVE on bookings for `slow_hold_s`: every insert, cancel
    and roster read waits, past the statement timeout."""
    hold_s = lab.plan.slow_hold_s
    marks.what = f"bookings locked ACCESS EXCLUSIVE for {hold_s:.0f} s"
    conn = await asyncpg.connect(lab.stores.database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
            marks.start = time.monotonic()
            await asyncio.sleep(hold_s)
        marks.end = time.monotonic()
        marks.calm = await locks_drained(conn)
    finally:
        await conn.close()


SLOW_COMMITS = ["""
CREATE OR REPLACE FUNCTION faults_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$""", """
CREATE OR REPLACE TRIGGER faults_slow_commit AFTER INSERT ON bookings
    FOR EACH STATEMENT EXECUTE FUNCTION faults_slow_commit()""",
                "ALTER SYSTEM SET client_connection_check_interval = '100ms'",
                "SELECT pg_reload_conf()"]
FAST_COMMITS = ["DROP TRIGGER IF EXISTS faults_slow_commit ON bookings",
                "ALTER SYSTEM RESET client_connection_check_interval", "SELECT pg_reload_conf()"]
SLOW_COMMIT_S = 0.5  # long enough that some grabs are still queued for the ledger


@contextlib.asynccontextmanager
async def slow_commits(lab: FaultLab, seconds: float) -> AsyncIterator[None]:
    """Every booking INSERT takes `seconds` longer (as on a slow disk), so that a worker killed
    at any instant has grabs between the gate and the ledger; and Postgres checks for a vanished
    client while it works, so that an INSERT whose worker died is rolled back, not committed."""
    conn = await asyncpg.connect(lab.stores.database_url)
    try:
        for statement in SLOW_COMMITS:
            await conn.execute(statement.format(seconds=float(seconds)))
        yield
    finally:
        for statement in FAST_COMMITS:
            await conn.execute(statement)
        await conn.close()


async def worker_killed(lab: FaultLab, rush: Rush, marks: Marks) -> None:
    """The busiest worker SIGKILLed mid-rush. Its seats taken but not written stay pending until
    the reconciler gives them back; uvicorn's supervisor should start a replacement."""
    if lab.workers < 2:
        raise ValueError("the worker scenario needs --workers 2 or more (one worker: no "
                         "supervisor, nothing left to serve)")
    course_ids = rush.stage.ids
    marks.disturbed = time.monotonic()  # slow commits answer 503 past the ledger's deadline
    async with slow_commits(lab, SLOW_COMMIT_S):
        await asyncio.sleep(1.0)
        load = lab.connections_per_worker()
        victim = max(load, key=lambda pid: load[pid])
        marks.what = (f"the busiest worker SIGKILLed (client connections per worker: {load}; "
                      f"commits slowed by {SLOW_COMMIT_S:.1f} s around the kill)")
        kill_ms = time.time() * 1000
        os.kill(victim, signal.SIGKILL)
        marks.start = time.monotonic()
        marks.end = await _replacement(lab, victim, marks)
        # The living worker settles its own grabs within a slow commit or two.
        await asyncio.sleep(max(0.0, marks.start + 4 * SLOW_COMMIT_S - time.monotonic()))
        orphans = await _orphans(lab, course_ids, kill_ms, marks)
    async with _connection(lab) as conn:
        marks.calm = await locks_drained(conn)
    # The killed worker's seats stay taken until the reconciler gives them back (and hands them
    # to the waitlists): the fault's effects last until then.
    await _wait_cleared(lab, course_ids, kill_ms, orphans, marks)
    marks.calm = max(marks.calm, time.monotonic())
    marks.notes["client connections per worker now"] = lab.connections_per_worker()


async def _replacement(lab: FaultLab, victim: int, marks: Marks, bound_s: float = 20) -> float:
    before = set(lab.service.worker_pids()) - {victim}
    while time.monotonic() - marks.start < bound_s:
        fresh = set(lab.service.worker_pids()) - before - {victim}
        if fresh:
            marks.notes["replacement worker"] = (f"pid {min(fresh)} after "
                                                 f"{time.monotonic() - marks.start:.1f} s")
            return time.monotonic()
        await asyncio.sleep(0.1)
    marks.notes["replacement worker"] = f"none within {bound_s:.0f} s"
    marks.violations.append(f"no worker replaced the killed one within {bound_s:.0f} s")
    return time.monotonic()


async def _orphans(lab: FaultLab, course_ids: list[int], kill_ms: float,
                   marks: Marks) -> list[tuple[int, str]]:
    """Pending marks from (just after) the kill still there seconds later: the dead worker's
    grabs. Redis may run a pipeline the worker sent a moment before it died: hence the 100 ms."""
    async with lab.clients() as (pool, redis):
        orphans = await pending_marks(redis, course_ids, kill_ms + 100)
        written = await _written(pool, orphans)
    marks.orphans_never_written = len(orphans) - len(written)
    marks.notes["orphaned seats (pending at the kill)"] = (
        f"{len(orphans)}: {marks.orphans_never_written} never written, {len(written)} written "
        f"but not settled")
    return orphans


async def _wait_cleared(lab: FaultLab, course_ids: list[int], kill_ms: float,
                        orphans: list[tuple[int, str]], marks: Marks) -> None:
    """Time until the reconciler has cleared every orphan (given back, or kept if written)."""
    bound_s = lab.settle_bound_s + 5
    async with lab.clients() as (_, redis):
        while orphans and time.monotonic() - marks.start < bound_s:
            still = set(await pending_marks(redis, course_ids, kill_ms + 100))
            orphans = [o for o in orphans if o in still]
            if orphans:
                await asyncio.sleep(0.2)
    waited = time.monotonic() - marks.start
    if orphans:
        marks.violations.append(f"{len(orphans)} orphaned seat(s) still pending {waited:.0f} s "
                                f"after the kill")
    marks.notes["orphans cleared s after the kill"] = round(waited, 2)


async def _written(pool: asyncpg.Pool, marks: list[tuple[int, str]]) -> set[tuple[int, str]]:
    if not marks:
        return set()
    rows = await pool.fetch(
        "SELECT course_id, resident_id FROM bookings WHERE booking_active(status) "
        "AND (course_id, resident_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        [c for c, _ in marks], [r for _, r in marks])
    return {(row[0], row[1]) for row in rows}


BURST_COURSES = 4  # sold-out courses the bursts of waitlist joins aim at
BURST_ROUNDS = 5  # flush and burst again while every join was answered
SMALL_POOL_ROUND_S = 5  # the service's default reconcile interval, not the lab's quick 1 s


async def redis_flushed_small_pool(lab: FaultLab, rush: Rush, marks: Marks) -> None:
    """One worker with a pool of `small_pool` connections; Redis loses every key (FLUSHALL) and
    at that moment `burst` residents (more than the pool has connections) join the waitlists
    of sold-out courses together: each join holds a connection while the gate, which no longer
    knows the course, has it loaded from Postgres. Every join must be answered. The joins race
    the reconciler's next round (a full one: the flush dropped its mark too) to the reload, so
    the service reconciles every `SMALL_POOL_ROUND_S` (its default) rather than every second,
    and the flush and the burst come up to `BURST_ROUNDS` times."""
    plan = lab.plan
    full = await sell_out(lab, rush, BURST_COURSES)
    marks.what = (f"Redis flushed (FLUSHALL) under {lab.workers} worker(s) with "
                  f"BOOKING_DB_POOL_SIZE={plan.small_pool}, and at once {plan.burst} residents "
                  f"join the waitlists of {len(full)} sold-out courses (up to {BURST_ROUNDS} "
                  f"times)")
    bound_s = Expect().max_latency_s + 1
    rounds = []
    for n in range(BURST_ROUNDS):
        async with lab.clients() as (_, redis):
            marks.start = marks.start or time.monotonic()
            await redis.flushall()
        answers = await rush.burst_join(full, plan.burst, bound_s, tag=f"burst{n}")
        rounds.append(f"{len(answers)} of {plan.burst} answered within {bound_s:.0f} s "
                      f"{dict(Counter(a.label for a in answers)) or ''}".strip())
        if len(answers) < plan.burst:
            break
    marks.end = time.monotonic()
    marks.notes["waitlist joins at one moment, flush by flush"] = "; ".join(rounds)


async def sell_out(lab: FaultLab, rush: Rush, wanted: int) -> list[int]:
    """`wanted` of the rush's hot courses with no seat left: the fullest ones, their last seats
    grabbed by residents who come for just that. The crowd leaves them alone from then on, so
    that after Redis lost its data nobody but the waitlist joins has the gate load them."""
    async with lab.clients() as (pool, _):
        rows = await pool.fetch(
            "SELECT id, capacity - active_bookings AS left FROM courses "
            "WHERE id = ANY($1::bigint[]) AND status = 'published' ORDER BY 2, id LIMIT $2",
            rush.stage.hot, wanted)
        rush.quiet.update(row["id"] for row in rows)
        await rush.fill({row["id"]: row["left"] for row in rows})
        left = await pool.fetch("SELECT id, capacity - active_bookings AS left FROM courses "
                                "WHERE id = ANY($1::bigint[]) ORDER BY id", list(rush.quiet))
    return [row["id"] for row in left if row["left"] == 0] or [row["id"] for row in left]


@dataclass(frozen=True, slots=True)
class Scenario:
    inject: Inject
    expect: Expect
    reconcile_cli: bool = False  # run `booking reconcile` before the final check
    service: dict[str, str] = field(default_factory=dict)  # settings over the plan's


def scenarios(plan: Plan) -> dict[str, Scenario]:
    slow_bound = STATEMENT_TIMEOUT_MS / 1000 + DEFAULT_DEADLINE_S + 3
    return {
        "redis": Scenario(redis_restart, Expect(), reconcile_cli=True),
        "postgres": Scenario(postgres_restart, Expect()),
        "worker": Scenario(worker_killed, Expect(unavailable_during=False, not_ready_during=False,
                                                 transport_errors_within_s=3.0)),
        # SELECT 1 does not touch the locked table: the service is ready, only slow to book.
        "slow": Scenario(slow_postgres, Expect(max_latency_s=slow_bound, not_ready_during=False)),
        # Redis answers throughout; the service must stay ready and answer every join.
        "small-pool": Scenario(redis_flushed_small_pool,
                               Expect(unavailable_during=False, not_ready_during=False),
                               service={"BOOKING_WORKERS": "1",
                                        "BOOKING_DB_POOL_SIZE": str(plan.small_pool),
                                        "BOOKING_RECONCILE_INTERVAL": str(SMALL_POOL_ROUND_S)}),
    }


SCENARIO_NAMES = tuple(scenarios(Plan()))  # in the order `--scenario all` runs them
