"""The plan of one cluster rehearsal: how big, how long, when each fault comes."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.cluster.balancer import Checks


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and moments (seconds after the opening) of one rehearsal; the test uses a short one.

    `workers` is 1 by default: on this 2-core machine three app processes are already more
    processes than cores, and the rehearsal plays hosts (processes sharing nothing but the
    stores), each of which would run as many workers as it has cores. More workers per process
    here would only add context switches, memory and Postgres connections."""

    apps: int = 3
    workers: int = 1
    residents: int = 40_000
    courses: int = 60
    seats: int = 100
    threads: int = 2  # wrk's
    connections: int = 96  # wrk's, to HAProxy: more than the servers' maxconn, so some queue
    rush_s: float = 22.0  # wrk stops by then (or when every resident is done)
    live_at_s: float = 1.0  # a resident watches a course through one app, grabs go through another
    redis_fault_at_s: float = 4.0  # SIGKILL one Redis primary
    app_fault_at_s: float = 12.0  # SIGKILL one app process
    probe_every_s: float = 0.05  # each shard's probe grabs its own roomy course this often
    pending_timeout_s: int = 5
    reconcile_interval_s: int = 1
    rate_address: str = "200/10"  # low, so that an address HAProxy failed to pass would show
    checks: Checks = field(default_factory=Checks)

    @property
    def settle_bound_s(self) -> float:
        """How long the reconciler may take to give back the seats of grabs cut off by a fault."""
        return self.pending_timeout_s + 3 * self.reconcile_interval_s + 5

    def problems(self) -> list[str]:
        """What makes this plan unusable, in sentences (empty: fine)."""
        found = []
        if self.apps < 2:
            found.append("--apps must be at least 2 (one is killed, one carries on).")
        if min(self.workers, self.residents, self.courses, self.seats, self.threads,
               self.connections) < 1:
            found.append("--workers, --residents, --courses, --seats, --threads and "
                         "--connections must be positive.")
        if not (self.live_at_s > 0 and self.redis_fault_at_s + 1 < self.app_fault_at_s
                < self.rush_s):
            found.append("the moments must come in order: 0 < --live-at, --redis-fault-at + 1 "
                         "< --app-fault-at < --rush.")
        return found


@dataclass(frozen=True, slots=True)
class Clock:
    """The running commentary's clock: moments as seconds after the opening."""

    opens_at: float

    def say(self, at: float, what: str) -> None:
        print(f"  t{at - self.opens_at:+7.2f} s  {what}", flush=True)
