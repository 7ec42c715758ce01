"""One whole scenario: publish, rush, break, recover, settle, check; every figure in the result.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from booking.ops.check import CheckReport, check_invariants
from booking.ops.rehearsal import publish_release
from loadtest.faults.figures import (
    Figures,
    Marks,
    answer_figures,
    findings,
    judge,
    judge_readiness,
    read_metrics,
    seat_figures,
    write_failures,
)
from loadtest.faults.lab import FaultLab
from loadtest.faults.rush import Rush, probe_readiness
from loadtest.faults.scenarios import Scenario, scenarios


async def publish(lab: FaultLab) -> list[int]:
    """A hot release, open now, and a few roomy courses beside it (so that, with every hot seat
    taken, grabs still reach Postgres while it is down)."""
    plan = lab.plan
    hot = await publish_release(lab.base_url, lab.secret, courses=plan.courses,
                                seats=plan.seats, opens_in_s=-1)
    if not plan.roomy_courses:
        return hot.course_ids
    roomy = await publish_release(lab.base_url, lab.secret, courses=plan.roomy_courses,
                                  seats=plan.residents, opens_in_s=-1)
    return hot.course_ids + roomy.course_ids


async def run_scenario(lab: FaultLab, name: str) -> Figures:
    """Publish, rush, break, recover, settle, check; every figure and violation in the result."""
    plan = lab.plan
    scenario = scenarios(plan)[name]
    course_ids = await publish(lab)
    inherited = await violations_now(lab)
    log_offset = lab.service.log_size()
    metrics_before = await read_metrics(lab.base_url)
    rush = Rush(lab.base_url, lab.secret, course_ids, plan,
                prefix=f"{name}-{secrets.token_hex(3)}")
    marks = Marks()
    began = time.monotonic()
    running = asyncio.create_task(rush.run())
    stop_probing = asyncio.Event()
    probing = asyncio.create_task(probe_readiness(lab.base_url, stop_probing))
    try:
        await asyncio.sleep(plan.warmup_s)
        await scenario.inject(lab, course_ids, marks)
        await asyncio.sleep(plan.recovery_s)
    finally:
        rush.stop()
        stop_probing.set()
        await running
    probes = await probing
    figures = Figures(name, marks.what, rush_s=time.monotonic() - began, notes=marks.notes,
                      violations=list(marks.violations))
    answer_figures(figures, rush.answers, marks)
    judge(figures, rush.answers, marks, scenario.expect)
    judge_readiness(figures, probes, marks, scenario.expect)
    await _finish(lab, scenario, figures, rush.received, inherited)
    reasons = write_failures(lab.service.log_since(log_offset))
    figures.seats = seat_figures(metrics_before, await read_metrics(lab.base_url), reasons)
    figures.warnings = findings(figures)
    return figures


async def _finish(lab: FaultLab, scenario: Scenario, figures: Figures, received: set[str],
                  inherited: frozenset[str]) -> None:
    """Wait for the reconciler, then check; after Redis lost everything, also `booking reconcile`
    (the lazily reloaded courses are checked first, as they were left by the rush)."""
    bound_s = lab.plan.settle_bound_s
    report, figures.settled_s, new = await settle(lab, received, bound_s, inherited)
    if scenario.reconcile_cli:
        figures.notes["checker before `booking reconcile`"] = "; ".join(new[:5]) or "clean"
        result = await asyncio.to_thread(lab.cli, "reconcile")
        figures.notes["booking reconcile"] = (result.stdout.strip() or result.stderr.strip())
        if result.returncode != 0:
            figures.violations.append(f"booking reconcile exited {result.returncode}")
        report, _, new = await settle(lab, received, 0, inherited)
    figures.check = report.summary()
    if inherited:
        figures.notes["violations left by earlier scenarios (not counted here)"] = len(inherited)
    if new:
        figures.violations.append(f"checker: {len(new)} violation(s): " + "; ".join(new[:5]))
        figures.settled_s = None  # never, within the bound


async def violations_now(lab: FaultLab) -> frozenset[str]:
    """What the checker says before a scenario: an earlier scenario's leftovers are its own."""
    async with lab.clients() as (pool, redis):
        return frozenset((await check_invariants(pool, redis)).violations)


async def settle(lab: FaultLab, received: set[str], bound_s: float,
                 inherited: frozenset[str]) -> tuple[CheckReport, float, list[str]]:
    """Poll the checker until it finds nothing new (the reconciler may need a pending timeout)."""
    started = time.monotonic()
    async with lab.clients() as (pool, redis):
        while True:
            report = await check_invariants(pool, redis, received)
            elapsed = time.monotonic() - started
            new = [v for v in report.violations if v not in inherited]
            if not new or elapsed > bound_s:
                return report, elapsed, new
            await asyncio.sleep(0.5)
