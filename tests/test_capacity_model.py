"""The capacity model (loadtest/capacity): the laws any queueing model must obey, the command's
refusal of a bench line it cannot use, and a short calibration on a real tiny `booking bench`.

No figure here is a timing goal: the laws hold whatever the costs, and the end-to-end run only
shows that the command prints the model beside the bench it was given.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import debian_tool

from booking.ops.service import free_port
from loadtest.capacity.calibrate import Bench
from loadtest.capacity.model import (
    RATE_LIMIT_CALLS,
    BenchCrowd,
    CityCrowd,
    Costs,
    Layout,
    Model,
    Residents,
    WrkCrowd,
    capacities,
)

ROOT = Path(__file__).resolve().parent.parent
COSTS = Costs(memory_no=0.0004, gate_no=0.0005, full_grab=0.0009, course_read=0.0003,
              filler=0.0001, redis_call=0.00001, pg_row=0.0002, client=0.00005)


def _bench_model(cores: float, costs: Costs = COSTS) -> tuple[Model, WrkCrowd]:
    plan = BenchCrowd(courses=20, seats=5, residents=3000, connections=64, threads=2)
    model = Model(Layout(workers=2, box_cores=cores, memory_share=0.8), costs,
                  [plan.seats] * plan.courses)
    crowd = WrkCrowd(model, plan)
    crowd.start()
    model.clock.run()
    return model, crowd


WITH_GC = replace(COSTS, gc_pause=0.02, gc_every=300)


@pytest.mark.parametrize(("cores", "costs"), [(1.0, COSTS), (2.0, COSTS), (2.0, WITH_GC)])
def test_throughput_never_exceeds_the_cpu_bound(cores: float, costs: Costs) -> None:
    model, crowd = _bench_model(cores, costs)
    assert crowd.finished_at is not None and model.figures.decisions >= 3000
    # Every decision costs at least a memory "no" in the app, its rate-limit calls in Redis
    # and the client's handling of the answer, all on the box's cores.
    cheapest = COSTS.memory_no + RATE_LIMIT_CALLS * COSTS.redis_call + COSTS.client
    assert model.figures.decisions / crowd.finished_at <= cores / cheapest
    # And no CPU of the model ever delivered more than its cores.
    assert model.demand_s() <= cores * model.clock.now * (1 + 1e-9)


def test_full_collections_stop_the_worker_and_cost_their_cpu() -> None:
    """Each worker pauses once every `gc_every` requests it takes (from a random point of its
    cycle), and the pauses are CPU on top of the requests' own."""
    model, crowd = _bench_model(2.0, WITH_GC)
    pauses = sum(app.gc.pauses for app in model.apps)
    answered = len(model.figures.latencies)  # taken: these, and at most one per connection
    workers, every = len(model.apps), WITH_GC.gc_every
    assert answered // every - workers <= pauses
    assert pauses <= (answered + len(crowd.connections)) // every + workers
    # A pause is app CPU the requests' own steps do not account for.
    without, _ = _bench_model(2.0)
    extra = model.box.used["app"] - without.box.used["app"]
    assert extra == pytest.approx(pauses * WITH_GC.gc_pause, rel=0.05)


def _city(machines: int, residents: int = 2000, spread_s: float = 1.0,
          grabs: int = 2, reads: int = 2, costs: Costs = COSTS) -> Model:
    layout = Layout(app_machines=machines, workers=2, one_box=False, app_cores=2.0,
                    redis_shards=2, pg_cores=2.0, rtt_s=0.0002, haproxy=True, maxconn=32,
                    memory_share=0.8)
    crowd = CityCrowd(residents=residents, courses=30, seats=150, grabs=grabs, reads=reads,
                      spread_s=spread_s, think_s=0.05)
    model = Model(layout, costs, capacities(30, 5, random.Random(1)), seed=1)
    Residents(model, crowd, residents).start()
    model.clock.run()
    return model


def test_more_app_machines_never_make_the_drain_slower() -> None:
    drains = [_city(machines, residents=4000).figures.last_answer for machines in (1, 2, 4, 8)]
    # One machine is overloaded by this crowd, so a second one helps; past that the drain
    # nears the crowd's own pace. The crowd's random course choices differ between layouts,
    # hence the 1 % of slack.
    assert drains[0] > drains[1]
    for fewer, more in itertools.pairwise(drains):
        assert more <= fewer * 1.01


def test_with_zero_load_p99_is_the_bare_service_path() -> None:
    """Residents far apart: no request ever waits for another, so every latency (and so the
    p99) is the hops' round trips plus the CPU on the path."""
    rtt = 0.0002
    reads = _city(1, residents=10, spread_s=100.0, grabs=0, reads=1)
    # HAProxy to app and back, app to Redis and back (one HGET).
    bare_read = 2 * rtt + COSTS.course_read + COSTS.redis_call
    assert reads.figures.percentile(99) == pytest.approx(bare_read, rel=1e-9)
    assert min(reads.figures.latencies) == pytest.approx(bare_read, rel=1e-9)

    grab = _city(1, residents=1, spread_s=1.0, grabs=1, reads=0)
    # HAProxy, the rate-limit pipeline, the gate, the commit, the settle: five round trips.
    bare_grab = (5 * rtt + COSTS.full_grab + (RATE_LIMIT_CALLS + 2) * COSTS.redis_call
                 + COSTS.pg_row)
    assert grab.figures.confirmed == 1
    assert grab.figures.percentile(99) == pytest.approx(bare_grab, rel=1e-9)

    # A full collection at every request stops the worker before anything else runs: each
    # read waits exactly one pause out.
    pausing = _city(1, residents=10, spread_s=100.0, grabs=0, reads=1,
                    costs=replace(COSTS, gc_pause=0.005, gc_every=1))
    assert pausing.figures.percentile(99) == pytest.approx(bare_read + 0.005, rel=1e-9)
    assert min(pausing.figures.latencies) == pytest.approx(bare_read + 0.005, rel=1e-9)


def _capacity(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest.capacity", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_command_refuses_a_bench_line_without_the_figures_it_needs(
        tmp_path: Path) -> None:
    lacking = tmp_path / "bench.json"
    lacking.write_text("Rush of 10 residents\n" + json.dumps(
        {"decisions_per_s": 100.0, "p99_ms": 20.0, "cut_short": False}) + "\n")
    done = _capacity("--bench", str(lacking))
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "server_cpu_s" in line and "options.workers" in line

    done = _capacity("--bench", str(tmp_path / "absent.json"))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


def test_the_model_is_held_against_the_decisions_as_the_crowd_timed_them() -> None:
    """A bench line with the crowd's own timing is compared on it; an older one on wrk's."""
    wrk_only = {"p50_ms": 30.0, "p95_ms": 80.0, "p99_ms": 900.0}
    timed = {**wrk_only, "decision_wait_ms": {"decisions_timed": 10, "p50": 20.0, "p95": 50.0,
                                              "p99": 90.0, "max": 120.0}}
    assert Bench(timed).latency_ms == {"p50": 20.0, "p95": 50.0, "p99": 90.0}
    assert Bench(wrk_only).latency_ms == {"p50": 30.0, "p95": 80.0, "p99": 900.0}
    assert "crowd" in Bench(timed).latency_source and "wrk" in Bench(wrk_only).latency_source


@pytest.fixture(scope="module")
def wrk() -> str:
    """wrk for `booking bench`, installed with apt-get when missing."""
    return debian_tool("wrk")


def test_a_short_calibration_on_a_real_tiny_bench(tmp_path: Path, wrk: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["BOOKING_DATA_DIR"] = str(tmp_path / "data")
    bench = subprocess.run(
        [sys.executable, "-m", "booking", "bench", "--courses", "20", "--seats", "5",
         "--residents", "2000", "--no-ceiling", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    line = bench.stdout.strip().splitlines()[-1]
    figures = json.loads(line)
    (tmp_path / "bench.json").write_text(line + "\n")
    latency = figures["service_latency"]  # the service's own histogram of grabs, by status
    assert latency["201"]["answers"] == figures["confirmed"] == 100
    assert latency["409"]["answers"] == figures["status_counts"]["409:sold_out"]
    assert latency["201"]["p99_le_ms"] is not None  # within the histogram's finite buckets
    waits = figures["decision_wait_ms"]  # each decision timed by the crowd itself
    assert waits["decisions_timed"] == figures["decisions"]
    assert 0 < waits["p50"] <= waits["p95"] <= waits["p99"] <= waits["max"]
    by_status = figures["decision_wait_ms_by_status"]  # the same decisions, by answer
    assert by_status["201"]["decisions_timed"] == 100
    assert by_status["409"]["decisions_timed"] == sum(
        n for key, n in figures["status_counts"].items() if key.startswith("409:"))

    done = _capacity("--bench", str(tmp_path / "bench.json"), "--no-projection")
    # Within 15 % or not (0 or 1), it prints the model beside the bench.
    assert done.returncode in (0, 1), done.stderr
    rows = {row.split("|")[1].strip(): row for row in done.stdout.splitlines()
            if row.startswith("| ")}
    assert f"{figures['decisions_per_s']:,.0f}" in rows["decisions/s"]
    assert "p99 ms" in rows and "sold out after s" in rows
    assert ("Calibrated" in done.stdout) == (done.returncode == 0)
