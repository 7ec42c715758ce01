"""The lab: stores of its own (so they can be broken), a `booking serve` on them, and a plan.

The stores are embedded Postgres and Redis in a folder of the lab's own, never DATABASE_URL /
REDIS_URL: a scenario kills them. `EmbeddedStores` has the handles to break them; the service
is started as an operator would start it (`booking.ops.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from redis.asyncio import Redis

from booking.core.embedded import EmbeddedStores
from booking.ops.service import Service


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one rehearsal; the tests use a short one."""

    residents: int = 400
    courses: int = 40  # hot ones, `seats` each: sold out within the warm-up
    seats: int = 20
    roomy_courses: int = 2  # a seat for every resident: grabs that reach Postgres at any time
    connections: int = 48
    warmup_s: float = 3.0
    fault_s: float = 5.0
    slow_hold_s: float = 8.0  # the lock outlasts the 5 s statement timeout on purpose
    recovery_s: float = 5.0
    cancel_share: float = 0.2  # of a holding resident's actions, the share that gives a seat back
    paid_share: float = 0.25  # hot courses with a price: a grab gives a hold, paid by callback
    pay_share: float = 0.8  # chance that a resident holding an unpaid hold pays it next
    swap_share: float = 0.2  # chance that a resident holding a seat of a pair swaps it across
    swap_wave: int = 20  # residents per side of a pair who swap across at the same moment
    wave_every_s: float = 2.0  # how often such a wave of opposite swaps comes
    waitlist_share: float = 0.3  # chance that a grab answered sold_out is followed by a join
    look_share: float = 0.2  # chance that a waiting resident looks at (or leaves) a place
    think_s: float = 0.05
    workers: int = 2
    pending_timeout_s: int = 5
    reconcile_interval_s: int = 1
    small_pool: int = 2  # BOOKING_DB_POOL_SIZE of the one worker in the small-pool scenario
    burst: int = 8  # residents joining waitlists at one moment there (more than the pool)

    @property
    def settle_bound_s(self) -> float:
        """How long the reconciler may take to make the gate agree once the rush is over."""
        return self.pending_timeout_s + 3 * self.reconcile_interval_s + 5


class FaultLab:
    """Owned stores, a service on them, and what a scenario needs to watch both."""

    def __init__(self, folder: Path, plan: Plan) -> None:
        self.folder = folder
        self.plan = plan
        self.secret = secrets.token_urlsafe(32)
        self.payment_secret = secrets.token_urlsafe(32)
        self.stores = EmbeddedStores(folder / "stores")
        self._service: Service | None = None
        self._overrides: dict[str, str] = {}

    async def __aenter__(self) -> FaultLab:
        try:
            await asyncio.to_thread(self._start_stores)
            self._service = Service(self._service_env(), self.folder / "service.log")
            await asyncio.to_thread(self._service.start)
        except BaseException:
            await asyncio.to_thread(self.stores.stop)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._service is not None:
            await asyncio.to_thread(self._service.stop)
        await asyncio.to_thread(self.stores.stop)

    def _start_stores(self) -> None:
        self.stores.start()
        if self.stores.redis_pid() is None:
            raise RuntimeError("a Redis was already answering on that socket; use a fresh folder")

    async def configure(self, overrides: Mapping[str, str]) -> None:
        """Run the service with these settings on top of the plan's (e.g. one worker and a
        small pool); restarted on the same port only when they differ from the running one's."""
        if dict(overrides) == self._overrides and self._service is not None:
            return
        port = self.service.port
        await asyncio.to_thread(self.service.stop)
        self._overrides = dict(overrides)
        self._service = Service({**self._service_env(), **self._overrides},
                                self.folder / "service.log", port=port)
        await asyncio.to_thread(self._service.start)

    @property
    def workers(self) -> int:
        """Worker processes of the running service."""
        return int(self.service.env["BOOKING_WORKERS"])

    @property
    def settle_bound_s(self) -> float:
        """How long the running service's reconciler may take to make the gate agree once the
        rush is over."""
        env = self.service.env
        return (int(env["BOOKING_PENDING_TIMEOUT"])
                + 3 * int(env["BOOKING_RECONCILE_INTERVAL"]) + 5)

    def _service_env(self) -> dict[str, str]:
        plan = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKING_")}
        return {**env, "DATABASE_URL": self.stores.database_url,
                "REDIS_URL": self.stores.redis_url, "BOOKING_SECRET": self.secret,
                "BOOKING_PAYMENT_SECRET": self.payment_secret,
                "BOOKING_DATA_DIR": str(self.folder / "service"),
                "BOOKING_WORKERS": str(plan.workers),
                "BOOKING_PENDING_TIMEOUT": str(plan.pending_timeout_s),
                "BOOKING_RECONCILE_INTERVAL": str(plan.reconcile_interval_s),
                # Limits on, so grabs take the real path, but too generous to shape the rush.
                "BOOKING_RATE_RESIDENT": "1000/10", "BOOKING_RATE_ADDRESS": "100000/10"}

    @property
    def service(self) -> Service:
        if self._service is None:
            raise RuntimeError("the lab is not started (use `async with FaultLab(...)`)")
        return self._service

    @property
    def base_url(self) -> str:
        return self.service.base_url

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
        """Fresh connections to both stores (old ones die with a restarted store)."""
        pool = await asyncpg.create_pool(self.stores.database_url, min_size=1, max_size=4)
        redis = Redis.from_url(self.stores.redis_url, decode_responses=True, socket_timeout=5)
        try:
            yield pool, redis
        finally:
            await redis.aclose()
            await pool.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `booking` command against the owned stores (e.g. `reconcile`)."""
        return subprocess.run([sys.executable, "-m", "booking", *args], env=self.service.env,
                              capture_output=True, text=True, timeout=120)

    def connections_per_worker(self) -> dict[int, int]:
        """Established client connections each worker serves. Keep-alive clients stay with the
        worker that accepted them, so one worker may hold most of a rush."""
        counts = {}
        for pid in self.service.worker_pids():
            with contextlib.suppress(psutil.Error):
                counts[pid] = sum(1 for c in psutil.Process(pid).net_connections("tcp")
                                  if c.laddr and c.laddr.port == self.service.port
                                  and c.status == psutil.CONN_ESTABLISHED)
        return counts
