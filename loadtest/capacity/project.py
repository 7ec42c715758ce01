"""The city-size projection: a Shanghai-size release on several two-core app machines.

Each run stands for the whole city through one app worker's slice (model.Scale): with M
machines of two workers behind HAProxy's leastconn, every worker gets 1/(2M) of the crowd and
shares the Redis shards and Postgres with 2M - 1 identical others, so the slice sees 1/(2M) of
each store's capacity. When a slice still holds more requests than the run's budget, a sample
of its residents is simulated, each standing for several (their costs multiplied alike), which
keeps utilisations and queueing and adds at most the sample's factor to the bare path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from loadtest.capacity.model import (
    CityCrowd,
    Costs,
    Layout,
    Model,
    Residents,
    Scale,
    capacities,
)

CITY_RESIDENTS, CITY_SEATS, CITY_COURSES = 650_000, 10_000, 390
SCENARIOS = {"light": (1, 2), "heavy": (3, 5)}  # grabs, refreshes (course reads) each
MACHINES = (4, 8, 16)
SENSITIVITY_MACHINES = 8
FULL_GRAB_FACTORS = (0.5, 1.0, 2.0)
MEMORY_SHARES = (0.5, 0.8, 0.95)
WORKERS_PER_MACHINE = 2


@dataclass(frozen=True)
class CityPlan:
    """The projection's assumptions beside the calibrated costs."""

    redis_shards: int = 3  # primaries, each on a core of its own (replicas take no grabs)
    pg_cores: float = 4.0  # one Postgres primary
    rtt_s: float = 0.0002  # one round trip per hop inside a data centre
    maxconn: int = 128  # HAProxy's per-server maxconn (64 per worker)
    queue_timeout_s: float = 30.0  # HAProxy's `timeout queue`
    spread_s: float = 10.0  # residents arrive over the first seconds after the opening
    think_s: float = 1.0  # between an answer and the same resident's next request
    budget: int = 100_000  # simulated requests per run at most (a sample beyond)

    def assumptions(self, memory_share: float) -> list[str]:
        return [
            f"{CITY_RESIDENTS:,} residents, {CITY_SEATS:,} seats in {CITY_COURSES} courses "
            f"(about {CITY_SEATS / CITY_COURSES:.1f} each); light: 1 grab + 2 refreshes each, "
            f"heavy: 3 grabs + 5 refreshes each (a grab moves on at sold_out and stops at a "
            f"seat, as booking bench's residents do; a refresh is a course read)",
            f"residents arrive uniformly over the first {self.spread_s:g} s after the opening, "
            f"then wait {self.think_s:g} s after each answer; a first grab aims at the hottest "
            f"tenth of the courses 90 % of the time, later ones at a course not yet sold out",
            f"each app machine: 2 cores, {WORKERS_PER_MACHINE} workers, nothing else on it "
            f"(the load generator and the stores elsewhere); the per-request CPU is the one box's",
            f"Redis: {self.redis_shards} primaries, each a single thread on a core of its own "
            f"(courses and residents spread over them by their hash tag); Postgres: one primary "
            f"with {self.pg_cores:g} cores, one backend per commit batch",
            f"HAProxy: leastconn, maxconn {self.maxconn} per server, `timeout queue` "
            f"{self.queue_timeout_s:g} s (a request queued longer is answered 503); its own CPU "
            f"is not modelled; latency is counted from HAProxy, not from the phone",
            f"one round trip of {self.rtt_s * 1000:g} ms on each hop (HAProxy-app, app-Redis, "
            f"app-Postgres); {memory_share:.0%} of sold-out answers from a worker's memory unless "
            f"varied",
            f"each run is one worker's slice of the city (1/(2 x machines) of the crowd and of "
            f"each store), sampled down to at most {self.budget:,} requests (each sampled "
            f"resident stands for several, costs multiplied alike); loads are means over the "
            f"drain",
        ]


@dataclass(frozen=True)
class Projected:
    scenario: str
    machines: int
    drain_s: float
    p99_ms: float
    sellout_s: float | None
    redis_load: float
    pg_load: float
    app_load: float
    rejected: int  # 503 from HAProxy's queue, city-wide
    sample: float


def project_one(costs: Costs, plan: CityPlan, scenario: str, machines: int,
                memory_share: float, seed: int = 1) -> Projected:
    grabs, reads = SCENARIOS[scenario]
    slices = machines * WORKERS_PER_MACHINE
    per_slice = CITY_RESIDENTS / slices
    sample = min(1.0, plan.budget / (per_slice * (grabs + reads)))
    residents = max(1, round(per_slice * sample))
    crowd = CityCrowd(residents=residents, courses=CITY_COURSES, seats=CITY_SEATS,
                      grabs=grabs, reads=reads, spread_s=plan.spread_s, think_s=plan.think_s)
    layout = Layout(app_machines=1, workers=1, one_box=False, app_cores=1.0,
                    redis_shards=plan.redis_shards, pg_cores=plan.pg_cores, rtt_s=plan.rtt_s,
                    haproxy=True, maxconn=plan.maxconn // WORKERS_PER_MACHINE,
                    queue_timeout_s=plan.queue_timeout_s, memory_share=memory_share,
                    scale=Scale(slices=slices, sample=sample))
    seats = capacities(CITY_COURSES, CITY_SEATS / CITY_COURSES * sample / slices,
                       random.Random(seed))
    model = Model(layout, costs, seats, seed=seed)
    Residents(model, crowd, residents).start()
    model.clock.run()
    figures = model.figures
    drain = figures.last_answer
    return Projected(
        scenario=scenario, machines=machines, drain_s=drain,
        p99_ms=figures.percentile(99) * 1000, sellout_s=figures.sellout_at,
        redis_load=model.utilisation("redis", model.redis_cpus, drain),
        pg_load=model.utilisation("postgres", [model.pg_cpu], drain),
        app_load=model.utilisation("app", [model.apps[0].loop.cpu], drain),
        rejected=round(figures.rejected / sample * slices), sample=sample)


def base_table(costs: Costs, plan: CityPlan, memory_share: float, seed: int = 1) -> str:
    rows = [project_one(costs, plan, scenario, machines, memory_share, seed)
            for scenario in SCENARIOS for machines in MACHINES]
    lines = ["| scenario | app machines (2 cores) | drain s | p99 ms | sold out after s | "
             "Redis load per shard | Postgres load | app load | 503s | sample |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.scenario} | {r.machines} | {r.drain_s:.1f} | {r.p99_ms:,.0f} | "
              f"{_seconds(r.sellout_s)} | {r.redis_load:.0%} | {r.pg_load:.0%} | "
              f"{r.app_load:.0%} | {r.rejected:,} | {r.sample:.2f} |" for r in rows]
    return "\n".join(lines)


def sensitivity_table(costs: Costs, plan: CityPlan, memory_share: float,
                      seed: int = 1) -> str:
    """At SENSITIVITY_MACHINES machines: the cost of a full grab, then the memory's share."""
    lines = [f"| scenario | varied (on {SENSITIVITY_MACHINES} app machines) | drain s | p99 ms | "
             f"sold out after s | Redis load per shard | Postgres load | app load | 503s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scenario in SCENARIOS:
        variants = [(f"full grab x{f:g}", costs.with_full_grab(f), memory_share)
                    for f in FULL_GRAB_FACTORS]
        variants += [(f"{share:.0%} of sold-outs from memory", costs, share)
                     for share in MEMORY_SHARES]
        for label, varied, share in variants:
            r = project_one(varied, plan, scenario, SENSITIVITY_MACHINES, share, seed)
            lines.append(f"| {scenario} | {label} | {r.drain_s:.1f} | {r.p99_ms:,.0f} | "
                         f"{_seconds(r.sellout_s)} | {r.redis_load:.0%} | {r.pg_load:.0%} | "
                         f"{r.app_load:.0%} | {r.rejected:,} |")
    return "\n".join(lines)


def city_costs(costs: Costs) -> Costs:
    """The one box's costs without the load generator (it runs elsewhere)."""
    return replace(costs, client=0.0)


def _seconds(value: float | None) -> str:
    return "not sold out" if value is None else f"{value:.1f}"
