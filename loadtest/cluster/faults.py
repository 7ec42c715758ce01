"""The two faults of the rehearsal, each with the marks its figures are measured from:

- a Redis primary SIGKILLed: its replica takes over after the cluster's node timeout; until
  then grabs of that shard's courses fail (503), grabs of the others must not;
- an app process SIGKILLed: HAProxy's health checks take it out; the seats its grabs in flight
  had taken stay pending in Redis (orphans) until a reconciler of another process gives them
  back after BOOKING_PENDING_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from booking.core.embedded_cluster import ClusterError
from booking.core.stores import close_redis, open_redis
from booking.seats import course_keys
from loadtest.cluster.plan import Clock
from loadtest.cluster.stack import Stack

ORPHAN_LOOK_AFTER_S = 2.0  # grabs of live processes clear their pending marks well within this
ORPHAN_MAX_AGE_S = 3.0  # marks this much older than the kill were not in flight then
SETTLE_TIMEOUT_S = 30.0
READ_TRIES_S = 10.0


@dataclass(slots=True)
class RedisFault:
    """The primary killed (its port), the courses it served then, when it was killed and when
    the cluster said every slot was served again (None: not within SETTLE_TIMEOUT_S)."""

    port: int
    courses: set[int]
    killed_at: float
    settled_at: float | None = None
    live_subscriber: bool = False  # app 1's live seats subscribed through it


@dataclass(slots=True)
class AppFault:
    """The app killed (its number and HAProxy's name for it) and when; the pending marks its
    grabs in flight left behind (course, resident) and how long after the kill the last of
    them was gone (None: not within the plan's settle bound); when it was started again after
    the rush and when HAProxy sent to it again."""

    index: int
    server: str
    killed_at: float
    orphans: set[tuple[int, str]] = field(default_factory=set)
    orphans_back_s: float | None = None
    restarted_at: float | None = None  # started again after the rush
    back_at: float | None = None  # HAProxy saw it UP again (None: not in time)


def victim_primary(stack: Stack, lanes: dict[int, int], prefer: set[int]) -> int:
    """A primary that serves a probe lane and is not the node REDIS_URL names (the commands
    run after the rehearsal still reach the cluster through it); one of `prefer` if it can
    (the node an app's live seats subscribe through: their loss is part of the rehearsal)."""
    named = stack.cluster.nodes[0].port
    candidates = [port for port in sorted(lanes) if port != named]
    return next((port for port in candidates if port in prefer), candidates[0])


async def break_redis(stack: Stack, lanes: dict[int, int], course_ids: list[int],
                      clock: Clock) -> RedisFault:
    """SIGKILL a primary (if it can, the one app 1's live seats subscribe through) and wait
    until its replica serves its slots."""
    subscribed = stack.live_subscriber_nodes(0)
    port = victim_primary(stack, lanes, subscribed)
    served = {c for c, p in stack.shard_of(course_ids).items() if p == port}
    fault = RedisFault(port, served, await asyncio.to_thread(stack.kill_redis_primary, port),
                       live_subscriber=port in subscribed)
    through = "; app1's live seats subscribe through it" if fault.live_subscriber else ""
    clock.say(fault.killed_at, f"Redis primary :{port} SIGKILLed ({len(served)} of our "
              f"courses on its shard{through})")
    try:
        await asyncio.to_thread(stack.cluster.wait_settled, SETTLE_TIMEOUT_S)
        fault.settled_at = time.time()
        clock.say(fault.settled_at, "its replica serves the shard (the cluster says so)")
    except ClusterError as exc:
        clock.say(time.time(), f"the cluster did not settle: {exc}")
    return fault


async def break_app(stack: Stack, n: int, course_ids: list[int], clock: Clock) -> AppFault:
    """SIGKILL app n; then note the pending marks its grabs in flight left behind."""
    fault = AppFault(n, stack.server_name(n), stack.kill_app(n))
    clock.say(fault.killed_at, f"app {fault.server} ({stack.apps[n].base_url}) SIGKILLed")
    await asyncio.sleep(ORPHAN_LOOK_AFTER_S)
    async with _cluster_client(stack) as redis:
        fault.orphans = await _pending_between(
            redis, course_ids, fault.killed_at - ORPHAN_MAX_AGE_S, fault.killed_at)
    return fault


async def wait_orphans_back(stack: Stack, fault: AppFault, bound_s: float) -> None:
    """Until none of the fault's orphaned pending marks is left (the reconciler of a living
    process gave each seat back, or kept it for a booking that was written)."""
    if not fault.orphans:  # no grab was in flight on it: nothing to give back
        fault.orphans_back_s = 0.0
        return
    async with _cluster_client(stack) as redis:
        while True:
            left = await _still_pending(redis, fault.orphans)
            if not left:
                fault.orphans_back_s = round(time.time() - fault.killed_at, 2)
                return
            if time.time() - fault.killed_at > bound_s:
                return
            await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def _cluster_client(stack: Stack) -> AsyncIterator[RedisCluster]:
    """A cluster client made as the service makes its own."""
    redis = open_redis(stack.cluster.url, cluster=True)
    assert isinstance(redis, RedisCluster)
    try:
        yield redis
    finally:
        await close_redis(redis)


async def _pending_between(redis: RedisCluster, course_ids: list[int], since: float,
                           until: float) -> set[tuple[int, str]]:
    """(course, resident) of every pending mark taken between these moments (epoch seconds;
    a mark's score is Redis's clock in ms, the same machine's)."""
    found = await _read(redis, [("zrangebyscore", course_keys(c)[2], since * 1000, until * 1000)
                                for c in course_ids])
    return {(c, member) for c, members in zip(course_ids, found, strict=True)
            for member in members}


async def _still_pending(redis: RedisCluster,
                         marks: set[tuple[int, str]]) -> set[tuple[int, str]]:
    ordered = sorted(marks)
    scores = await _read(redis, [("zscore", course_keys(c)[2], member) for c, member in ordered])
    return {mark for mark, score in zip(ordered, scores, strict=True) if score is not None}


async def _read(redis: RedisCluster, commands: list[tuple[object, ...]]) -> list[object]:
    """The replies of these commands, one pipeline per node; tried again for a few seconds
    while the cluster is still settling (redis-py lets a connection a server closed mid-call
    escape as AttributeError or RuntimeError, redis/redis-py#4287)."""
    deadline = time.monotonic() + READ_TRIES_S
    while True:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for name, *args in commands:
                    getattr(pipe, str(name))(*args)
                return list(await pipe.execute())
        except (RedisError, OSError, AttributeError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
