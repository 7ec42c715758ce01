"""One whole scenario: publish, rush, break, recover, drain, settle, check; every figure in the
result.
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
    judge_refunds,
    judge_unanswered,
    read_metrics,
    seat_figures,
    write_failures,
)
from loadtest.faults.lab import FaultLab
from loadtest.faults.rush import Rush, Stage, probe_readiness
from loadtest.faults.scenarios import Scenario, scenarios


async def publish(lab: FaultLab) -> Stage:
    """A hot release, open now, `paid_share` of it paid, and roomy courses beside it (a seat for
    every resident, so that with every hot seat taken grabs still reach Postgres while it is
    down), taken two by two as swap pairs, the first of each pair paid."""
    plan = lab.plan
    hot = await publish_release(lab.base_url, lab.secret, courses=plan.courses,
                                seats=plan.seats, opens_in_s=-1, paid_share=plan.paid_share)
    prices = {c: hot.price(c) for c in hot.paid_course_ids}
    if not plan.roomy_courses:
        return Stage(hot.course_ids, prices)
    roomy = await publish_release(lab.base_url, lab.secret, courses=plan.roomy_courses,
                                  seats=plan.residents, opens_in_s=-1, paid_share=0.5)
    prices |= {c: roomy.price(c) for c in roomy.paid_course_ids}
    pairs = list(zip(roomy.course_ids[::2], roomy.course_ids[1::2], strict=False))
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    return Stage(hot.course_ids + roomy.course_ids, prices, partner)


async def run_scenario(lab: FaultLab, name: str) -> Figures:
    """Publish, rush, break, recover, drain, settle, check; every figure and violation in the
    result."""
    plan = lab.plan
    scenario = scenarios(plan)[name]
    await lab.configure(scenario.service)
    stage = await publish(lab)
    inherited = await violations_now(lab)
    log_offset = lab.service.log_size()
    metrics_before = await read_metrics(lab.base_url)
    rush = Rush(lab.base_url, (lab.secret, lab.payment_secret), stage, plan,
                prefix=f"{name}-{secrets.token_hex(3)}")
    marks = Marks()
    began = time.monotonic()
    rush.start()
    stop_probing = asyncio.Event()
    probing = asyncio.create_task(probe_readiness(lab.base_url, stop_probing))
    try:
        await asyncio.sleep(plan.warmup_s)
        await scenario.inject(lab, rush, marks)
        await asyncio.sleep(plan.recovery_s)
    finally:
        await rush.finish(drain_s=scenario.expect.max_latency_s + 2)
        stop_probing.set()
    probes = await probing
    figures = Figures(name, marks.what, rush_s=time.monotonic() - began, notes=marks.notes,
                      violations=list(marks.violations))
    answer_figures(figures, rush.answers, marks)
    figures.notes["opposite swaps sent at one moment, wave by wave"] = rush.waves or "none"
    judge(figures, rush.answers, marks, scenario.expect)
    judge_unanswered(figures, rush.unanswered)
    judge_readiness(figures, probes, marks, scenario.expect)
    await _finish(lab, scenario, figures, rush.received, inherited)
    await judge_refunds(figures, lab.base_url, lab.secret, rush.refunds_owed)
    reasons = write_failures(lab.service.log_since(log_offset))
    metrics_after = await read_metrics(lab.base_url)
    if not metrics_after:
        figures.notes["/metrics"] = "did not answer after the rush (seat figures from the log)"
    figures.seats = seat_figures(metrics_before, metrics_after or metrics_before, reasons)
    figures.warnings = findings(figures)
    return figures


async def _finish(lab: FaultLab, scenario: Scenario, figures: Figures, received: set[str],
                  inherited: frozenset[str]) -> None:
    """Wait for the reconciler, then check; after Redis lost everything, also `booking reconcile`
    (the lazily reloaded courses are checked first, as they were left by the rush)."""
    bound_s = lab.settle_bound_s
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
