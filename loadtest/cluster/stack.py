"""The stack of one rehearsal, as hosts would run it: a private Redis Cluster (3 primaries, 3
replicas), one Postgres (DATABASE_URL, or a private one), N `booking serve` processes on them
(each its own data folder and workers, sharing nothing but the stores) and HAProxy in front.

Started in that order (the first app alone, since it brings the schema up to date; the others
together) and stopped in reverse; `kill_redis_primary` and `kill_app` break one part on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import redis
from redis.crc import key_slot

from booking.core.embedded_cluster import EmbeddedCluster, Node
from booking.core.settings import Settings
from booking.core.stores import running
from booking.ops.service import Service
from booking.seats import course_keys
from loadtest.cluster.balancer import Balancer
from loadtest.cluster.cpu import CpuMeter, postgres_backends, trees
from loadtest.cluster.plan import Plan


class Stack:
    """Use as `with Stack(folder, plan) as stack:`; everything it started stops on the way out."""

    def __init__(self, folder: Path, plan: Plan) -> None:
        self.folder = folder
        self.plan = plan
        self.secret = secrets.token_urlsafe(32)
        self.payment_secret = secrets.token_urlsafe(32)
        self.cluster = EmbeddedCluster(folder / "redis")
        self.apps: list[Service] = []
        self.balancer: Balancer | None = None
        self.database_url = ""
        self._private_postgres = False
        self._postmaster: int | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        print("Starting a private Redis Cluster (3 primaries + 3 replicas) ...", flush=True)
        self._exit.enter_context(self.cluster)
        settings = self._exit.enter_context(running(self._store_settings(), quiet=True))
        self.database_url = str(settings.database_url)
        self._private_postgres = not os.environ.get("DATABASE_URL")
        self._postmaster = self._postmaster_pid()
        print(f"Starting {self.plan.apps} app processes ({self.plan.workers} worker(s) each) "
              "on the cluster ...", flush=True)
        self.apps = [Service(self._app_env(n), self.folder / f"app{n + 1}" / "server.log")
                     for n in range(self.plan.apps)]
        self._exit.callback(self._stop_apps)
        self.apps[0].start()  # alone: it brings the schema up to date
        with ThreadPoolExecutor(len(self.apps)) as pool:
            for started in pool.map(lambda app: app.start(), self.apps[1:]):
                del started
        self.balancer = Balancer([(self.server_name(n), app.port)
                                  for n, app in enumerate(self.apps)],
                                 self.folder / "haproxy", self.plan.checks)
        self._exit.callback(self.balancer.stop)
        self.balancer.start()
        print(f"HAProxy on {self.balancer.base_url} in front of "
              f"{', '.join(app.base_url for app in self.apps)}", flush=True)

    def _store_settings(self) -> Settings:
        """The cluster as REDIS_URL; Postgres from DATABASE_URL, or a private one in our folder
        (`running` then also starts a private single Redis, which nothing uses)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKING_")}
        return Settings.from_env({**env, "REDIS_URL": self.cluster.url,
                                  "BOOKING_REDIS_CLUSTER": "1", "BOOKING_SECRET": self.secret,
                                  "BOOKING_DATA_DIR": str(self.folder / "stores")})

    def _app_env(self, n: int) -> dict[str, str]:
        plan = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKING_")}
        return {**env, "DATABASE_URL": self.database_url, "REDIS_URL": self.cluster.url,
                "BOOKING_REDIS_CLUSTER": "1", "BOOKING_SECRET": self.secret,
                "BOOKING_PAYMENT_SECRET": self.payment_secret,
                "BOOKING_DATA_DIR": str(self.folder / f"app{n + 1}"),
                "BOOKING_WORKERS": str(plan.workers),
                "BOOKING_PENDING_TIMEOUT": str(plan.pending_timeout_s),
                "BOOKING_RECONCILE_INTERVAL": str(plan.reconcile_interval_s),
                "BOOKING_RATE_ADDRESS": plan.rate_address,
                # HAProxy connects from loopback: its X-Forwarded-For is trusted from there.
                "FORWARDED_ALLOW_IPS": "127.0.0.1"}

    def _stop_apps(self) -> None:
        with ThreadPoolExecutor(len(self.apps) or 1) as pool:
            list(pool.map(lambda app: app.stop(grace_s=20), self.apps))

    # ------------------------------------------------------------------------------ names

    @staticmethod
    def server_name(n: int) -> str:
        return f"app{n + 1}"

    @property
    def base_url(self) -> str:
        assert self.balancer is not None
        return self.balancer.base_url

    @property
    def service_env(self) -> dict[str, str]:
        """An environment naming the stores, for `booking` commands (reconcile)."""
        return self.apps[0].env

    def primaries(self) -> dict[int, list[tuple[int, int]]]:
        """Each live primary's port and the slot ranges (start, end) it serves now."""
        client = self._any_node()
        served: dict[int, list[tuple[int, int]]] = {}
        for start, end, primary, *_ in client.cluster("SLOTS"):
            served.setdefault(int(primary[1]), []).append((int(start), int(end)))
        return served

    def shard_of(self, course_ids: list[int]) -> dict[int, int]:
        """The port of the primary serving each course's keys now."""
        served = self.primaries()
        found = {}
        for course_id in course_ids:
            slot = key_slot(course_keys(course_id)[0].encode())
            found[course_id] = next(port for port, ranges in served.items()
                                    if any(a <= slot <= b for a, b in ranges))
        return found

    def live_subscriber_nodes(self, n: int) -> set[int]:
        """The ports of the nodes app n's live-seat pub/sub connection is on (the service
        names its other pub/sub clients; that one has no name)."""
        app = self.apps[n]
        mine: set[int] = set()
        with contextlib.suppress(psutil.Error):
            for pid in (app.pid, *app.worker_pids()):
                if pid is not None:
                    mine |= {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                             if c.laddr}
        found = set()
        for node in self.cluster.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(redis.RedisError, OSError):
                for client in node.client().client_list():
                    port = int(str(client.get("addr", ":0")).rsplit(":", 1)[1])
                    if (int(client.get("sub", 0)) > 0 and not client.get("name")
                            and port in mine):
                        found.add(node.port)
        return found

    def node(self, port: int) -> Node:
        return next(node for node in self.cluster.nodes if node.port == port)

    def _any_node(self) -> redis.Redis:
        alive = [n for n in self.cluster.nodes if n.process is not None
                 and n.process.poll() is None]
        return alive[0].client()

    # ------------------------------------------------------------------------------ faults

    def kill_redis_primary(self, port: int) -> float:
        """SIGKILL the primary on `port`; when (epoch seconds)."""
        at = time.time()
        self.cluster.kill(self.node(port))
        return at

    def kill_app(self, n: int) -> float:
        """SIGKILL app n and its workers, as a host that loses power; when (epoch seconds)."""
        app = self.apps[n]
        pids = [pid for pid in (app.pid, *app.worker_pids()) if pid is not None]
        at = time.time()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return at

    # ------------------------------------------------------------------------------ CPU

    def cpu_meter(self) -> CpuMeter:
        """CPU of the app processes, the Redis nodes, HAProxy and Postgres (all of a private
        one; the backends of our database on a shared one; left out on another machine)."""
        assert self.balancer is not None
        balancer = self.balancer
        nodes = self.cluster.nodes
        groups = {
            "app": trees(lambda: [app.pid for app in self.apps]),
            "redis": trees(lambda: [n.process.pid if n.process else None for n in nodes]),
            "haproxy": trees(lambda: [balancer.pid]),
        }
        if self._postmaster is not None:  # else its CPU is not ours to see
            groups["postgres"] = postgres_backends(
                self._postmaster, None if self._private_postgres else self._database_name())
        return CpuMeter(groups)

    def _database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/") or "postgres"

    def _postmaster_pid(self) -> int | None:
        """The Postgres server's pid (the parent of a backend we ask, while it lives); None when
        that server is not on this machine."""
        async def postmaster() -> int | None:
            connection = await asyncpg.connect(self.database_url)
            try:
                backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
                with contextlib.suppress(psutil.Error):
                    parent = psutil.Process(backend).parent()
                    if parent is not None and "postgres" in parent.name():
                        return parent.pid
                return None
            finally:
                await connection.close()

        return asyncio.run(postmaster())
