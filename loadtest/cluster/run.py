"""One whole rehearsal: start the stack, publish, rush through HAProxy while the faults come,
let the dust settle, reconcile, check, and return the figures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from booking.core.db import create_pool
from booking.core.stores import close_redis, open_redis
from booking.ops.check import CheckReport, check_invariants
from booking.ops.rehearsal import Release, publish_release
from loadtest.cluster.crowd import (
    LiveSeen,
    Probes,
    WrkRush,
    check_forwarded_for,
    mint_tokens,
    probe_lanes,
    run_wrk,
    watch_across,
)
from loadtest.cluster.faults import (
    AppFault,
    RedisFault,
    break_app,
    break_redis,
    wait_orphans_back,
)
from loadtest.cluster.figures import Seen, figures
from loadtest.cluster.plan import Clock, Plan
from loadtest.cluster.stack import Stack

OPENING_LEAD_S = 3.0
ROOMY_COURSES = 12  # open at once, a seat for every probe: one per primary is a probe's lane
AFTER_APP_FAULT_S = 3.0  # the probes keep going this long after the app was taken out
APART_S = 1.0  # the app fault comes at least this long after the Redis fault is over
SHARD_BACK_TIMEOUT_S = 15.0


@dataclass(slots=True)
class Stage:
    """The release the crowd rushes, each primary's probe course (port -> course id), the
    course the live-seat watcher watches, and every course of the rehearsal."""

    release: Release
    lanes: dict[int, int]
    live_course: int

    @property
    def course_ids(self) -> list[int]:
        return [*self.release.course_ids, *self.lanes.values(), self.live_course]


def rehearse(plan: Plan, folder: Path) -> dict[str, object]:
    """The whole rehearsal on a stack of its own under `folder`; its figures."""
    with Stack(folder, plan) as stack:
        return asyncio.run(_rehearse(stack, folder))


async def _rehearse(stack: Stack, folder: Path) -> dict[str, object]:
    plan = stack.plan
    stage = await _publish(stack)
    print(f"Minting {plan.residents} resident tokens ...", flush=True)
    tokens = mint_tokens(stack.secret, plan.residents, folder / "tokens.txt")
    shards = stack.shard_of(stage.course_ids)
    clock = Clock(stage.release.opens_at_epoch)
    meter = stack.cpu_meter()
    await _until(clock.opens_at)
    print(f"Sales open: {plan.residents} residents rush through HAProxy over "
          f"{plan.connections} connections; probes on {len(stage.lanes)} shards.", flush=True)
    meter.start()
    rush_from = time.time()
    stop_probes = asyncio.Event()
    probes = Probes()
    probing = asyncio.create_task(probe_lanes(stack.base_url, stack.secret, stage.lanes,
                                              plan.probe_every_s, stop_probes, probes))
    rushing = asyncio.create_task(asyncio.to_thread(
        run_wrk, stack.base_url, stage.release, plan, tokens, folder))
    live, redis_fault, app_fault = await _faults(stack, stage, clock, probes)
    wrk = await rushing
    ending = "every resident answered" if wrk.all_done else "stopped by --rush"
    clock.say(time.time(), f"wrk done ({ending})")
    await _until(app_fault.killed_at + plan.checks.bound_s + AFTER_APP_FAULT_S)
    stop_probes.set()
    await probing
    rush_until = time.time()
    meter.stop()
    await wait_orphans_back(stack, app_fault, plan.settle_bound_s)
    live_after = await _restart(stack, app_fault, stage, clock)
    return await _judge(stack, stage, Collected(
        clock, rush_from, rush_until, shards, wrk, probes, (live, live_after), redis_fault,
        app_fault, meter.seconds()))


async def _publish(stack: Stack) -> Stage:
    plan = stack.plan
    print(f"Publishing {plan.courses} courses x {plan.seats} seats, and roomy courses for the "
          "probes ...", flush=True)
    lanes: dict[int, int] = {}
    spare: list[int] = []
    primaries = len(stack.primaries())
    while len(lanes) < primaries or not spare:
        roomy = await publish_release(stack.base_url, stack.secret, courses=ROOMY_COURSES,
                                      seats=10_000, opens_in_s=-1)
        for course_id, port in stack.shard_of(roomy.course_ids).items():
            if port not in lanes:
                lanes[port] = course_id
            else:
                spare.append(course_id)
    opens_in = OPENING_LEAD_S + plan.courses * 0.02
    release = await publish_release(stack.base_url, stack.secret, courses=plan.courses,
                                    seats=plan.seats, opens_in_s=opens_in)
    return Stage(release, lanes, spare[0])


async def _faults(stack: Stack, stage: Stage, clock: Clock,
                  probes: Probes) -> tuple[LiveSeen, RedisFault, AppFault]:
    """The live-seat watch, then the Redis primary, then the app (once the killed primary's
    shard has booked a probe again, so that the two faults' windows do not overlap), each at
    its moment."""
    plan = stack.plan
    await _until(clock.opens_at + plan.live_at_s)
    live = await _watch(stack, stage, clock, watched=0, grabbing=1, tag="live-before")
    await _until(clock.opens_at + plan.redis_fault_at_s)
    redis_fault = await break_redis(stack, stage.lanes, stage.course_ids, clock)
    booked = await probes.booked(redis_fault.port, redis_fault.settled_at or time.time(),
                                 SHARD_BACK_TIMEOUT_S)
    if booked is not None:
        clock.say(booked, "a probe of the killed primary's shard is booked again")
    await _until(max(clock.opens_at + plan.app_fault_at_s, (booked or time.time()) + APART_S))
    app_fault = await break_app(stack, plan.apps - 1, stage.course_ids, clock)
    return live, redis_fault, app_fault


async def _watch(stack: Stack, stage: Stage, clock: Clock, *, watched: int, grabbing: int,
                 tag: str) -> LiveSeen:
    """A resident watches the live course on app `watched`; grabs go through app `grabbing`."""
    on, through = stack.apps[watched], stack.apps[grabbing]
    clock.say(time.time(), f"a resident watches course {stage.live_course} on {on.base_url} "
              f"(and through HAProxy); grabs go through {through.base_url}")
    seen = await watch_across(on.base_url, through.base_url, stack.base_url, stack.secret,
                              stage.live_course, tag)
    clock.say(time.time(), f"the stream showed them after {seen.shown_after_s} s (through "
              f"HAProxy: {seen.through_haproxy_after_s} s)")
    return seen


async def _restart(stack: Stack, fault: AppFault, stage: Stage, clock: Clock) -> LiveSeen:
    """The killed app started again (a host back from a reboot): HAProxy puts it back once its
    checks pass; then the live watch again, grabs going through it."""
    await asyncio.to_thread(stack.apps[fault.index].start)
    fault.restarted_at = time.time()
    clock.say(fault.restarted_at, f"app {fault.server} started again")
    assert stack.balancer is not None
    fault.back_at = await asyncio.to_thread(stack.balancer.wait_up, fault.server,
                                            fault.killed_at)
    if fault.back_at is not None:
        clock.say(fault.back_at, f"HAProxy sends to {fault.server} again")
    return await _watch(stack, stage, clock, watched=0, grabbing=fault.index, tag="live-after")


@dataclass(slots=True)
class Collected:
    clock: Clock
    rush_from: float
    rush_until: float
    shards: dict[int, int]
    wrk: WrkRush
    probes: Probes
    live: tuple[LiveSeen, LiveSeen]  # before the faults, and after them
    redis: RedisFault
    app: AppFault
    cpu: dict[str, float]


async def _judge(stack: Stack, stage: Stage, got: Collected) -> dict[str, object]:
    """The address check, the checker before and after `booking reconcile`, the figures."""
    plan = stack.plan
    limit = int(plan.rate_address.split("/")[0])
    forwarded = await check_forwarded_for(stack.base_url, stack.secret,
                                          next(iter(stage.lanes.values())), limit)
    received = (got.wrk.received | got.probes.received | got.live[0].received
                | got.live[1].received)
    before = await _check(stack, stage, received)
    print("Reconciling (booking reconcile) ...", flush=True)
    reconciled = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "booking", "reconcile"], env=stack.service_env,
        capture_output=True, text=True, timeout=300)
    if reconciled.returncode != 0:
        print(reconciled.stdout + reconciled.stderr, flush=True)
    after = await _check(stack, stage, received)
    assert stack.balancer is not None
    seen = Seen(plan, got.clock.opens_at, got.rush_from, got.rush_until,
                stack.balancer.requests(), got.shards, got.wrk, got.probes, got.live, forwarded,
                got.redis, got.app, stack.balancer.states, got.cpu, before, after)
    return figures(seen)


async def _check(stack: Stack, stage: Stage, received: set[str]) -> CheckReport:
    pool = await create_pool(stack.database_url, 2)
    redis = open_redis(stack.cluster.url, cluster=True)
    try:
        return await check_invariants(pool, redis, received, course_ids=stage.course_ids)
    finally:
        await close_redis(redis)
        await pool.close()


async def _until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
