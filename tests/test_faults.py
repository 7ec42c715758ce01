"""It keeps working when things break: short forms of `python -m loadtest.faults`.

Each test rushes a hot release of its own and breaks one thing under the rush: Redis killed and
restarted empty, Postgres stopped and started, a worker SIGKILLed, the bookings table locked
past the statement timeout, Redis flushed under one worker with a pool of two while more
residents than that join waitlists at one moment. The crowd grabs, pays holds of paid courses,
cancels (paid bookings too), swaps in both directions between the two courses of a pair, and
joins, looks at and leaves waitlists. The stores are private to this module (the suite's own are
never touched) and so is the `booking serve` on them. Every test asserts the same rules the
script prints a verdict on: no 500 and no 5xx but 503 `unavailable`, and that one only around
the fault; only answers the API documents; 503s while a store is down; bounded latency; no
request left unanswered; grabs succeed again soon after; every refund owed is listed; and the
checker finds nothing once the reconciler had its pending timeout (5 s here).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the loadtest folder

from loadtest.faults import FaultLab, Figures, Plan, run_scenario
from loadtest.faults.figures import count

SHORT = Plan(residents=200, courses=20, seats=10, connections=32, warmup_s=2.0, fault_s=3.0,
             slow_hold_s=7.0, recovery_s=3.0)


@pytest_asyncio.fixture(scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultLab]:
    async with FaultLab(tmp_path_factory.mktemp("faults"), SHORT) as started:
        yield started


async def rehearse(lab: FaultLab, name: str) -> Figures:
    """Run one scenario; its figures are printed (shown with -s or on failure)."""
    figures = await run_scenario(lab, name)
    print("\n".join(figures.lines()))
    return figures


def assert_shared_rules(figures: Figures) -> None:
    report = "\n".join(figures.lines())
    # The crowd did all it is there to do: a rehearsal that never swapped proves nothing.
    for done in ("grab 201", "pay 200 confirmed", "cancel 200", "swap 201", "join 201"):
        assert any(label.startswith(done) for label in figures.overall), (done, report)
    assert not [k for k in figures.overall if " 500 " in k], report
    assert not figures.unanswered, report
    assert not figures.violations, report


def unavailable_during(figures: Figures) -> int:
    return count(figures.during, "503 unavailable")


def not_ready_during(figures: Figures) -> bool:
    """A load balancer polling /ready saw 503 while the store was down."""
    return "503 x" in str(figures.readiness["during"])


async def test_redis_killed_and_restarted_empty(lab: FaultLab) -> None:
    figures = await rehearse(lab, "redis")

    assert_shared_rules(figures)
    assert unavailable_during(figures) > 0
    assert not_ready_during(figures)
    # Counters came back from Postgres lazily, on the first grab of each course.
    assert figures.seats.reconciler_restored > 0
    assert figures.notes["checker before `booking reconcile`"] == "clean"


async def test_postgres_stopped_and_started(lab: FaultLab) -> None:
    figures = await rehearse(lab, "postgres")

    assert_shared_rules(figures)
    assert unavailable_during(figures) > 0
    assert not_ready_during(figures)
    # Grabs reached the ledger while it was down; the checker (above) found every seat of a
    # failed write back in the gate, whether given back at once or by the reconciler.
    assert figures.seats.failed_writes > 0


async def test_worker_killed_mid_grab(lab: FaultLab) -> None:
    figures = await rehearse(lab, "worker")

    assert_shared_rules(figures)
    assert "after" in str(figures.notes["replacement worker"])
    assert figures.notes["orphans cleared s after the kill"] <= (  # type: ignore[operator]
        SHORT.pending_timeout_s + 3 * SHORT.reconcile_interval_s + 2)


async def test_slow_postgres_times_out_cleanly(lab: FaultLab) -> None:
    figures = await rehearse(lab, "slow")

    assert_shared_rules(figures)
    assert unavailable_during(figures) > 0
    # No pile-up: once the lock is gone, grabs are answered at once.
    assert figures.recovery["first 201 after"] is not None
    assert figures.recovery["first 201 after"] < 2


async def test_redis_flushed_under_a_small_pool_answers_every_join(lab: FaultLab) -> None:
    figures = await rehearse(lab, "small-pool")

    assert_shared_rules(figures)
    # Every join sent at a flush was answered, in time, and the worker stayed ready.
    rounds = str(figures.notes["waitlist joins at one moment, flush by flush"]).split("; ")
    assert all(r.startswith(f"{SHORT.burst} of {SHORT.burst} answered") for r in rounds), (
        "\n".join(figures.lines()))
    assert figures.readiness["last"] == 200
