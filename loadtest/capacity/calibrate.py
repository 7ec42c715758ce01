"""Calibration: the model's service times from one `booking bench` run, and that run rebuilt.

The bench's JSON line (booking/ops/bench.py, its last printed line) gives the CPU seconds of the
service, Redis, Postgres and wrk over the rush, the answers by outcome (how many sold-out
answers a worker gave from memory) and the options. It does not split the service's CPU by kind
of answer, so that split is derived here from a stated structure (see `derive_costs`), and
every derivation is printed with the comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.capacity.model import (
    RATE_LIMIT_CALLS,
    BenchCrowd,
    Costs,
    Layout,
    Model,
    WrkCrowd,
)

TOLERANCE = 0.15  # the model must land within 15 % of the bench on decisions/s and p99
MACHINE_CORES = 2.0  # the one box the bench ran on
GATE_NO_FACTOR = 1.2  # a sold-out from the gate costs the app this many memory "no"s
FULL_GRAB_FACTOR = 2.0  # a grab that takes a seat costs the app this many memory "no"s
ONE_BOX_RTT_S = 0.00005  # loopback round trip (its CPU is in the processes' own)
# CPython's full garbage collections in a worker, measured by loadtest/capacity/gcprobe.py
# (README, "The tail"): one worker of `booking serve` under 128 connections of sold-out grabs
# runs one every ~2,000 answers (121 young collections, as CPython 3.11's thresholds give).
# Before workers froze their start-up heap (booking/core/heap.py) each took 88 ms of CPU, the
# CPU of 268 of its mean answers (13.0 % of the worker's); since, 9.6 ms, 33 mean answers'
# CPU (1.6 %). Kept as ratios to the mean answer, so they follow the machine's speed; the
# model is of the service as it is now (the README has the calibration of before).
GC_EVERY_ANSWERS = 2012
GC_PAUSE_ANSWERS = 33.0

REQUIRED = ("decisions_per_s", "p50_ms", "p99_ms", "rush_s", "decisions", "confirmed",
            "server_cpu_s", "redis_cpu_s", "postgres_cpu_s", "client_cpu_s",
            "service_grab_outcomes", "options", "cut_short")
REQUIRED_OPTIONS = ("courses", "seats", "residents", "concurrency", "workers", "threads")


class BenchError(ValueError):
    """A bench line the model cannot be calibrated on; the message says why, in one line."""


@dataclass(frozen=True)
class Bench:
    """The figures of one bench run the model needs."""

    figures: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.figures[name]

    @property
    def option(self) -> dict[str, Any]:
        return self.figures["options"]

    @property
    def sold_out(self) -> int:
        return int(self["service_grab_outcomes"].get("sold_out", 0))

    @property
    def from_memory(self) -> int:
        return int(self["service_grab_outcomes"].get("from_memory:sold_out", 0))

    @property
    def memory_share(self) -> float:
        return self.from_memory / self.sold_out if self.sold_out else 0.0

    @property
    def _timed(self) -> dict[str, Any] | None:
        """The bench's own timing of each decision (`decision_wait_ms`); None in an older line."""
        waits = self.figures.get("decision_wait_ms") or {}
        return waits if waits.get("p99") is not None else None

    @property
    def latency_ms(self) -> dict[str, float | None]:
        """p50, p95 and p99 to hold the model against: each decision as the bench's crowd timed
        it, as the model times its own; in an older bench line, wrk's, which include the
        samples wrk adds for slow answers."""
        if (waits := self._timed) is not None:
            return {"p50": waits["p50"], "p95": waits["p95"], "p99": waits["p99"]}
        return {"p50": self["p50_ms"], "p95": self.figures.get("p95_ms"), "p99": self["p99_ms"]}

    @property
    def latency_source(self) -> str:
        return ("each decision as the bench's crowd timed it" if self._timed is not None
                else "wrk's, with the samples it adds for slow answers (an older bench line)")

    @property
    def gate_no(self) -> int:
        return self.sold_out - self.from_memory

    @property
    def used_cores(self) -> float:
        """The cores the bench's own processes got during the rush (service, Redis, Postgres,
        wrk): the rest of the box went to the kernel's work not charged to a process and to
        other jobs on the machine."""
        cpu = sum(float(self[k]) for k in ("server_cpu_s", "redis_cpu_s", "postgres_cpu_s",
                                           "client_cpu_s"))
        return min(MACHINE_CORES, cpu / float(self["rush_s"]))


def read_bench(path: Path) -> Bench:
    """The last JSON object line of `path` (a bench's whole output or just its JSON line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read the bench file {path}: {exc.strerror}") from exc
    for line in reversed(lines):
        if line.strip().startswith("{"):
            try:
                return check_bench(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path}: its last JSON line does not parse: {exc}") from exc
    raise BenchError(f"{path} holds no JSON line of booking bench")


def check_bench(figures: object) -> Bench:
    """The figures if the model can use them, else a BenchError naming what is missing."""
    if not isinstance(figures, dict):
        raise BenchError("the bench line is not a JSON object")
    missing = [k for k in REQUIRED if figures.get(k) is None]
    options = figures.get("options") if isinstance(figures.get("options"), dict) else {}
    missing += [f"options.{k}" for k in REQUIRED_OPTIONS if options.get(k) is None]
    outcomes = figures.get("service_grab_outcomes")
    if isinstance(outcomes, dict) and "taken" not in outcomes:
        missing.append("service_grab_outcomes.taken")  # the service's /metrics was not read
    if missing:
        raise BenchError(f"the bench line lacks {', '.join(missing)} (a booking bench JSON line "
                         f"of this version has them)")
    if figures["cut_short"]:
        raise BenchError("that bench was cut short by --max-seconds: its rush is incomplete")
    if figures.get("term_cap") or options.get("flood"):
        raise BenchError("the model rebuilds a plain rush: a bench with --term-cap or --flood "
                         "cannot calibrate it")
    if not figures["decisions"] or not figures["confirmed"] or not figures["rush_s"]:
        raise BenchError("that bench made no decisions or confirmed nothing")
    return Bench(figures)


def derive_costs(bench: Bench, full_grab_factor: float = FULL_GRAB_FACTOR,
                 cores: float | None = None, gc: bool = True) -> tuple[Costs, list[str]]:
    """The model's service times from the bench's CPU, and the sentences that say how."""
    decisions, taken = int(bench["decisions"]), int(bench["confirmed"])
    memory, gate = bench.from_memory, bench.gate_no
    units = memory + GATE_NO_FACTOR * gate + full_grab_factor * taken
    gc_pause, gc_share = gc_costs(bench) if gc else (0.0, 0.0)
    memory_no = float(bench["server_cpu_s"]) * (1 - gc_share) / units
    calls = RATE_LIMIT_CALLS * decisions + (gate + taken) + gate + taken
    client = float(bench["client_cpu_s"]) / decisions
    box = cores or bench.used_cores
    ceiling = bench.figures.get("ceiling_rps")
    filler = max(memory_no / 10, box / ceiling - client) if ceiling else memory_no / 3
    costs = Costs(memory_no=memory_no, gate_no=memory_no * GATE_NO_FACTOR,
                  full_grab=memory_no * full_grab_factor, course_read=memory_no,
                  filler=filler, redis_call=float(bench["redis_cpu_s"]) / calls,
                  pg_row=float(bench["postgres_cpu_s"]) / taken, client=client,
                  gc_pause=gc_pause, gc_every=GC_EVERY_ANSWERS if gc else 0)
    ms = 1000
    said = [
        _gc_said(gc_pause, gc_share),
        f"service CPU {bench['server_cpu_s']} s{' less the collections' if gc else ''} split "
        f"over its answers: {memory} sold-out "
        f"from memory, {gate} sold-out from the gate (x{GATE_NO_FACTOR}: one more pipelined "
        f"script call and the look that remembers it), {taken} seats taken "
        f"(x{full_grab_factor:g}: gate, group commit, settle, 201); the bench does not split "
        f"it, so the factors are assumptions: memory no {costs.memory_no * ms:.4f} ms, gate no "
        f"{costs.gate_no * ms:.4f} ms, full grab {costs.full_grab * ms:.4f} ms",
        f"Redis CPU {bench['redis_cpu_s']} s over {calls} script calls ({RATE_LIMIT_CALLS} "
        f"rate-limit calls per decision, a gate call per answer not from memory, a look per "
        f"gate sold-out, a settle per seat): {costs.redis_call * 1e6:.2f} us a call",
        f"Postgres CPU {bench['postgres_cpu_s']} s, all of it charged to the {taken} bookings "
        f"(its background rounds too, an upper bound): {costs.pg_row * ms:.4f} ms a row",
        f"wrk CPU {bench['client_cpu_s']} s: {costs.client * ms:.4f} ms per answer",
        f"a course read costs what a memory no does (the bench reads no course); a /health "
        f"filler costs the bare stack ({costs.filler * ms:.4f} ms"
        f"{', from the ceiling' if ceiling else ', a third of a memory no: no ceiling'})",
        f"the box: {box:.2f} of its {MACHINE_CORES:g} cores, the CPU the bench's processes got "
        f"in the rush, shared by processor sharing among 2 x {bench.option['workers']} "
        f"workers' loops, Redis, Postgres's backends and wrk's threads; loopback round trip "
        f"{ONE_BOX_RTT_S * 1e6:.0f} us per hop",
        f"{bench.memory_share:.1%} of the sold-out answers from a worker's memory, as measured",
    ]
    return costs, said


def gc_costs(bench: Bench) -> tuple[float, float]:
    """A full collection's CPU (in the bench's mean answers) and its share of the service's."""
    mean_answer = float(bench["server_cpu_s"]) / int(bench["decisions"])
    return GC_PAUSE_ANSWERS * mean_answer, GC_PAUSE_ANSWERS / GC_EVERY_ANSWERS


def _gc_said(pause: float, share: float) -> str:
    if not pause:
        return "no garbage collection pauses (--no-gc): all of the service's CPU is in its answers"
    return (f"a full garbage collection in each worker every {GC_EVERY_ANSWERS:,} requests it "
            f"takes, stopping its loop for {pause * 1000:.0f} ms of CPU ({GC_PAUSE_ANSWERS:g} "
            f"mean answers' CPU, as measured on one worker: {share:.1%} of the service's CPU)")


def one_box(bench: Bench, cores: float | None = None) -> Layout:
    return Layout(app_machines=1, workers=int(bench.option["workers"]), one_box=True,
                  box_cores=cores or bench.used_cores, rtt_s=ONE_BOX_RTT_S,
                  memory_share=bench.memory_share)


def bench_crowd(bench: Bench) -> BenchCrowd:
    option = bench.option
    return BenchCrowd(courses=int(option["courses"]), seats=int(option["seats"]),
                      residents=int(option["residents"]),
                      connections=int(option["concurrency"]), threads=int(option["threads"]))


@dataclass(frozen=True)
class Outcome:
    """The model's run of the bench beside the bench's figures."""

    decisions_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    sellout_s: float | None
    rush_s: float
    decisions: int
    confirmed: int


def run_bench_model(bench: Bench, costs: Costs, layout: Layout, seed: int = 1) -> Outcome:
    plan = bench_crowd(bench)
    model = Model(layout, costs, [plan.seats] * plan.courses, seed=seed)
    crowd = WrkCrowd(model, plan)
    crowd.start()
    model.clock.run()
    figures = model.figures
    rush_s = crowd.finished_at or model.clock.now
    return Outcome(decisions_per_s=figures.decisions / rush_s,
                   p50_ms=figures.percentile(50) * 1000, p95_ms=figures.percentile(95) * 1000,
                   p99_ms=figures.percentile(99) * 1000,
                   sellout_s=figures.sellout_at, rush_s=rush_s, decisions=figures.decisions,
                   confirmed=figures.confirmed)


def within(model: float, bench: float) -> bool:
    return bench > 0 and abs(model - bench) / bench <= TOLERANCE


def comparison(bench: Bench, outcome: Outcome) -> tuple[str, bool]:
    """The side-by-side table and whether both gated figures are within tolerance."""

    def row(name: str, measured: float | None, modelled: float | None, gated: bool) -> str:
        if measured is None or modelled is None:
            return f"| {name} | {_num(measured)} | {_num(modelled)} | (not measured) |"
        off = (modelled - measured) / measured if measured else 0.0
        verdict = ("yes" if within(modelled, measured) else "NO") if gated else "(shown only)"
        return f"| {name} | {_num(measured)} | {_num(modelled)} | {off:+.1%} {verdict} |"

    latency = bench.latency_ms
    ok = (within(outcome.decisions_per_s, float(bench["decisions_per_s"]))
          and within(outcome.p99_ms, float(latency["p99"] or 0)))
    lines = ["| figure | bench | model | model vs bench, within 15 % |",
             "| --- | --- | --- | --- |",
             row("decisions/s", float(bench["decisions_per_s"]), outcome.decisions_per_s, True),
             row("p99 ms", latency["p99"], outcome.p99_ms, True),
             row("p50 ms", latency["p50"], outcome.p50_ms, False),
             row("p95 ms", latency["p95"], outcome.p95_ms, False),
             row("sold out after s", bench.figures.get("sellout_s"), outcome.sellout_s, False),
             row("rush s", float(bench["rush_s"]), outcome.rush_s, False),
             row("decisions", float(bench["decisions"]), outcome.decisions, False),
             "", f"The bench's latency: {bench.latency_source}."]
    return "\n".join(lines), ok


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
