"""One sweeper round at a time across hosts, by the Redis lock alone.

Three `booking serve` processes are started apart, as three hosts would be: no supervisor in
common, nothing shared but one Postgres database and one Redis. The interleaving is made on
purpose: the test holds the bookings table (ACCESS EXCLUSIVE), so the round that took the lock
stops at its first query and stays inside. While it is stuck, every attempt of the other two
processes must be skipped and no second round may reach Postgres. Then the process stuck in its
round is SIGKILLed: its lock lapses after the pending timeout and a round of a survivor begins
(and stops at the same table lock: still one at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
from conftest import (
    Stores,
    private_database,
    private_redis_url,
    service_env,
    wait_for,
)

from booking.ops.service import Service

HOSTS = 3
# A round's lock lapses this long after its process died. It also sets the app's statement
# timeout (a quarter of it: 5 s), so a round stopped at the test's table lock stays inside for
# 5 s and then fails (and ends, releasing the lock, as any failed round does).
PENDING_TIMEOUT_S = 20
# The sessions stopped at the test's table lock, with when their statement began (one round's
# first query): on idle services, only a sweeper round reads the bookings table.
ROUNDS_INSIDE = """
SELECT pid, query_start FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""
ROUNDS_LINE = re.compile(r'^booking_sweeper_rounds_total\{outcome="(ran|skipped)"\} (\S+)$',
                         re.MULTILINE)


def rounds(service: Service) -> dict[str, int]:
    """This process's sweeper attempts so far: {'ran': n, 'skipped': m}, from its /metrics."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=5).text
    counts = {"ran": 0, "skipped": 0}
    counts.update({outcome: int(float(value)) for outcome, value in ROUNDS_LINE.findall(text)})
    return counts


@contextlib.contextmanager
def hosts(stores: Stores, database_url: str, redis_url: str, logs: Path) -> Iterator[list[Service]]:
    """HOSTS services of one worker each on the same stores, each its own process tree."""
    with contextlib.ExitStack() as stack:
        services = []
        for n in range(HOSTS):
            env = service_env(stores, logs / f"host{n}", DATABASE_URL=database_url,
                              REDIS_URL=redis_url, BOOKING_WORKERS="1",
                              BOOKING_PENDING_TIMEOUT=str(PENDING_TIMEOUT_S),
                              BOOKING_RECONCILE_INTERVAL="1")
            services.append(stack.enter_context(Service(env, logs / f"host{n}" / "serve.log")))
        yield services


class RoundsInside:
    """Watches, every 50 ms while the table is held, which sessions are stopped at its lock:
    `now` (the latest look), `seen` (every one so far) and `most` (the most at one look). Two
    rounds at once would both stay stopped for seconds, so no look could miss them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.now: set[tuple[int, object]] = set()
        self.seen: set[tuple[int, object]] = set()
        self.most = 0

    async def watch(self) -> None:
        while True:
            self.now = {(row["pid"], row["query_start"])
                        for row in await self._conn.fetch(ROUNDS_INSIDE)}
            self.seen |= self.now
            self.most = max(self.most, len(self.now))
            await asyncio.sleep(0.05)


async def test_one_round_at_a_time_across_hosts(stores, tmp_path):
    async with private_database(stores) as database_url:
        redis_url = private_redis_url(stores)
        with hosts(stores, database_url, redis_url, tmp_path) as services:
            holding, watching = await asyncpg.connect(database_url), await asyncpg.connect(
                database_url)
            try:
                await _rounds_under_a_held_table(holding, watching, services)
            finally:
                await holding.close()
                await watching.close()


async def _rounds_under_a_held_table(holding: asyncpg.Connection, watching: asyncpg.Connection,
                                     services: list[Service]) -> None:
    inside = RoundsInside(watching)
    tx = holding.transaction()
    await tx.start()
    await holding.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
    watcher = asyncio.create_task(inside.watch())
    try:
        holder, others = await _one_stuck_round_refuses_the_others(inside, services)

        # The holder dies inside its round: its lock lapses, then one survivor's round begins
        # (and stops at the same table lock).
        survivors_ran = sum(rounds(s)["ran"] for s in others)
        stuck_before_kill = set(inside.seen)
        os.kill(holder.pid, signal.SIGKILL)
        holder.stop()

        async def a_survivor_ran() -> bool:
            return sum(rounds(s)["ran"] for s in others) > survivors_ran

        await wait_for(a_survivor_ran, timeout=PENDING_TIMEOUT_S * 2)

        async def its_round_inside() -> bool:
            return bool(inside.now - stuck_before_kill)

        await wait_for(its_round_inside)
        assert sum(rounds(s)["ran"] for s in others) == survivors_ran + 1
        assert inside.most == 1, "two rounds were inside at once"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await tx.rollback()

    # Released, the rounds go on: the survivors take turns again.
    ran_now = sum(rounds(s)["ran"] for s in others)

    async def rounds_go_on() -> bool:
        return sum(rounds(s)["ran"] for s in others) >= ran_now + 2

    await wait_for(rounds_go_on)


async def _one_stuck_round_refuses_the_others(
        inside: RoundsInside, services: list[Service]) -> tuple[Service, list[Service]]:
    """Waits for a round stopped at the table lock while every other process tries and is
    refused the lock (at least once each); returns the process whose round it is, and the
    others. A round that fails at its statement timeout first is followed by the next."""
    for _ in range(3):
        holder = await _watch_one_round(inside, services)
        if holder is not None:
            return holder, [s for s in services if s is not holder]
    raise AssertionError("three rounds in a row were over before the others had tried")


async def _watch_one_round(inside: RoundsInside, services: list[Service]) -> Service | None:
    async def one_inside() -> bool:
        return len(inside.now) == 1

    await wait_for(one_inside)
    stuck = set(inside.now)
    tried = [rounds(s) for s in services]

    def refused(n: int) -> bool:
        return rounds(services[n])["skipped"] > tried[n]["skipped"]

    async def others_refused_or_round_over() -> bool:
        assert inside.most == 1, "two rounds were inside at once"
        return sum(map(refused, range(HOSTS))) == HOSTS - 1 or inside.now != stuck

    await wait_for(others_refused_or_round_over)
    now = [rounds(s) for s in services]
    if inside.now != stuck:
        return None  # the round failed at its statement timeout first: watch the next one
    assert [c["ran"] for c in now] == [t["ran"] for t in tried], "no other round began"
    [holder] = [s for s, c, t in zip(services, now, tried, strict=True) if c == t]
    return holder
