"""`booking bench`: start the service, publish a release, rush it with wrk, check, report.

wrk (a C load generator, Debian package `wrk`) drives `bench_rush.lua`, which gives every
request its own resident token and moves residents on to another course when told sold_out.
Before and after the rush the same wrk settings measure the bare stack (booking/ops/ceiling.py:
one Litestar POST, no I/O, the same uvicorn options and worker count), and the rush is reported
as a ratio of that ceiling. A rush cut short by --max-seconds reports what wrk saw until then,
and says so. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil

from booking.core.auth import mint
from booking.core.settings import ConfigError, Settings
from booking.core.stores import running
from booking.ops.bench_metrics import ServiceView, answers, read_view
from booking.ops.bench_waits import Waits, every_answer, read_waits, wait_figures
from booking.ops.check import CheckReport, check_invariants, read_received
from booking.ops.rehearsal import Release, publish_release
from booking.ops.service import Service, ServiceError, free_port

if TYPE_CHECKING:
    from booking.core.embedded_cluster import EmbeddedCluster

OPENING_LEAD_S = 3.0
HOT_SHARE = 0.9
CHOICES = 5
CEILING_S = 5


def run(args: argparse.Namespace) -> int:
    """0: a clean rush; 1: violations or 5xx; 2: clean, but cut short by --max-seconds."""
    _check_options(args)
    settings = Settings.from_env()
    if not (settings.database_url and settings.redis_url):
        bench_dir = settings.data_dir / "bench"
        shutil.rmtree(bench_dir, ignore_errors=True)  # a fresh ledger for every bench run
        settings = Settings.from_env({**os.environ, "BOOKING_DATA_DIR": str(bench_dir)})
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.redis_cluster:
            cluster = stack.enter_context(_private_cluster(settings.data_dir / "cluster"))
            settings = replace(settings, redis_url=cluster.url, redis_cluster=True)
        ready = stack.enter_context(running(settings))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        service = Service(_service_env(ready, args), work / "server.log", port=args.port)
        try:
            service.start()
        except ServiceError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            with _ceiling(args, ready, work) as ceiling:
                figures = _rush(ready, args, service, work, ceiling, cluster)
        finally:
            service.stop(grace_s=30)
    print(json.dumps(figures))
    if figures["violations"] or figures["status_5xx"]:
        return 1
    return 2 if figures["cut_short"] else 0


def _check_options(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise ConfigError("booking bench needs wrk: apt-get install wrk.")
    if not 0 <= args.flood <= 0.9:
        raise ConfigError("--flood is a share of the requests, from 0 to 0.9.")
    if not 0 <= args.term_cap <= 20:
        raise ConfigError("--term-cap is seats per resident, from 1 to 20 (0: no release).")
    if min(args.courses, args.seats, args.residents, args.concurrency, args.workers,
           args.threads) < 1:
        raise ConfigError("--courses, --seats, --residents, --concurrency, --workers and "
                          "--threads must be positive.")


def _private_cluster(folder: Path) -> EmbeddedCluster:
    """--redis-cluster: a private 3 + 3 Redis Cluster for this run (its node logs in
    `folder`)."""
    from booking.core.embedded_cluster import EmbeddedCluster

    print(f"Starting a private Redis Cluster (3 primaries, 3 replicas) under {folder}/ ...",
          flush=True)
    return EmbeddedCluster(folder)


def _service_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": str(settings.database_url),
            "REDIS_URL": str(settings.redis_url), "BOOKING_SECRET": settings.secret,
            "BOOKING_WORKERS": str(args.workers),
            "BOOKING_REDIS_CLUSTER": "1" if settings.redis_cluster else "0"}


@dataclass
class Rush:
    """What wrk did: its output, how long the rush ran, and whether it was cut short (some
    thread never saw all its residents done before wrk stopped)."""

    output: str
    seconds: float
    cut_short: bool


def _rush(settings: Settings, args: argparse.Namespace, service: Service, work: Path,
          ceiling: Ceiling | None, cluster: EmbeddedCluster | None) -> dict[str, object]:
    base = service.base_url
    release, tokens = _prepare(settings, args, base, work)
    ceiling_before = ceiling.measure("before the rush") if ceiling else None
    opens_at = time.time() + OPENING_LEAD_S + len(release.course_ids) * 0.005
    if args.term_cap:  # the release moves the opening (a course of one refuses a PATCH of it)
        print(f"Opening the courses in first-come releases of one term capped at "
              f"{args.term_cap} ...", flush=True)
        asyncio.run(cap_term(base, settings.secret, release, args.term_cap, opens_at))
    else:
        asyncio.run(_move_opening(base, settings.secret, release, opens_at))
    meter = CpuMeter(service, settings, cluster)
    view_before = read_view(base)
    cpu_before, client_before = meter.sample(), _children_cpu()
    time.sleep(max(0.0, opens_at - time.time()))
    print(f"Sales open: {args.residents} residents rush over {args.concurrency} connections.",
          flush=True)
    rush = _run_wrk(args, base, _rush_env(args, release, tokens, work), work)
    cpu = {k: _delta(v, cpu_before[k]) for k, v in meter.sample().items()}
    cpu["client"] = _children_cpu() - client_before
    view = read_view(base).since(view_before)
    ceiling_after = ceiling.measure("after the rush") if ceiling else None
    counts, started = read_counts(work, args.threads)
    received = read_received(work.glob("wrk-*-ids.txt"))
    report, sellout_s = asyncio.run(_verify(settings, release, received, opens_at))
    seen = Seen(counts, started, view, rush, sellout_s, read_waits(work, args.threads))
    return _report(args, seen, cpu, (ceiling_before, ceiling_after), report)


def _prepare(settings: Settings, args: argparse.Namespace, base: str,
             work: Path) -> tuple[Release, Path]:
    """The release published (opening in a minute, for now) and a file of resident tokens."""
    print(f"Publishing {args.courses} courses x {args.seats} seats ...", flush=True)
    release = asyncio.run(publish_release(base, settings.secret, courses=args.courses,
                                          seats=args.seats, opens_in_s=60))
    print(f"Minting {args.residents} resident tokens ...", flush=True)
    tokens = work / "tokens.txt"
    tokens.write_text("\n".join(mint(settings.secret, "resident", f"bench-{n}")
                                for n in range(args.residents)) + "\n")
    return release, tokens


async def cap_term(base: str, secret: str, release: Release, cap: int, opens_at: float) -> None:
    """The bench's courses in first-come releases (500 courses each at most) of one term whose
    cap is `cap`, opening at `opens_at`: every grab then takes a quota."""
    headers = {"Authorization": f"Bearer {mint(secret, 'operator', 'bench')}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        for start in range(0, len(release.course_ids), 500):
            answer = await http.post("/v1/releases", json={
                "title": f"bench {start // 500 + 1}", "mode": "fcfs", "term": "bench-term",
                "term_cap": cap,
                "opens_at": datetime.fromtimestamp(opens_at, UTC).isoformat(),
                "course_ids": release.course_ids[start:start + 500]})
            if answer.status_code != 201:
                raise ConfigError(f"creating the bench's release answered "
                                  f"{answer.status_code}: {answer.text}")


def _rush_env(args: argparse.Namespace, release: Release, tokens: Path,
              work: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_TOKENS": str(tokens),
            "BENCH_COURSES": ",".join(map(str, release.course_ids)),
            "BENCH_HOT": str(len(release.hot)),
            "BENCH_HOT_SHARE": str(HOT_SHARE), "BENCH_CHOICES": str(CHOICES),
            "BENCH_THREADS": str(args.threads), "BENCH_OUT": str(work / "wrk"),
            "BENCH_FLOOD": str(args.flood)}


def _run_wrk(args: argparse.Namespace, base: str, env: dict[str, str], work: Path) -> Rush:
    return run_wrk(base, env, work, threads=args.threads, connections=args.concurrency,
                   seconds=args.max_seconds)


def run_wrk(base: str, env: dict[str, str], work: Path, *, threads: int, connections: int,
            seconds: float) -> Rush:
    """wrk with bench_rush.lua (`env` its BENCH_* settings) until every thread has written its
    done marker, or until wrk stops by itself (its -d ran out first: the rush was cut short).
    Also the multi-host rehearsal's rush (loadtest/cluster)."""
    script = work / "bench_rush.lua"
    script.write_text(resources.files("booking.ops").joinpath("bench_rush.lua").read_text())
    started = time.monotonic()
    wrk = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s",
         "--timeout", "10s", "-s", str(script), base], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def all_done() -> bool:
        return all((work / f"wrk-{t}-done").exists() for t in range(threads))

    while not all_done() and wrk.poll() is None:
        time.sleep(0.01)
    seconds = time.monotonic() - started
    wrk.send_signal(signal.SIGINT)
    output, _ = wrk.communicate(timeout=60)
    return Rush(output, seconds, cut_short=not all_done())


async def _move_opening(base: str, secret: str, release: Release, opens_at: float) -> None:
    """Open every course of the release at the same instant, a moment from now."""
    when = datetime.fromtimestamp(opens_at, UTC).isoformat()
    headers = {"Authorization": f"Bearer {mint(secret, 'operator', 'bench')}"}
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:

        async def move(course_id: int) -> None:
            async with limit:
                answer = await http.patch(f"/v1/courses/{course_id}",
                                          json={"sales_open_at": when})
            answer.raise_for_status()

        await asyncio.gather(*(move(c) for c in release.course_ids))


@dataclass(frozen=True)
class BareRun:
    """One run of wrk against the bare stack: its rate, and its own tail (the same machine's
    noise, wrk's and the server's share of the crowd's p99, with no app work at all)."""

    rps: float
    p99_ms: float | None


WRK_P99 = re.compile(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", re.M)


def _wrk_p99_ms(output: str) -> float | None:
    """The 99th percentile of wrk's --latency distribution, in ms."""
    found = WRK_P99.search(output)
    if found is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return round(float(found.group(1)) * scale, 1)


CEILING_SCRIPT = """-- booking bench's ceiling: a grab's request, built per request like the rush's.
local headers = {["Authorization"] = "Bearer %s", ["X-Request-Id"] = "1.1.1",
                 ["X-Forwarded-For"] = "10.0.0.1", ["Content-Length"] = "0"}
function request() return wrk.format("POST", "/v1/courses/1/bookings", headers) end
function response(status, headers, body) local id = string.match(body, '"id":"([%%x%%-]+)"') end
"""


class Ceiling:
    """The bare stack (booking/ops/ceiling.py) in its own uvicorn, rushed by wrk with the
    bench's threads and connections for CEILING_S seconds at a time."""

    def __init__(self, args: argparse.Namespace, token: str, work: Path) -> None:
        self.args, self.work = args, work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = work / "ceiling.lua"
        self.script.write_text(CEILING_SCRIPT % token)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        with (self.work / "ceiling.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "booking.ops.ceiling", "--port", str(self.port),
                 "--workers", str(self.args.workers)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"the ceiling app did not start; see {self.work}/ceiling.log")
            time.sleep(0.2)
        time.sleep(1.0)  # every worker past its imports before wrk connects

    def _ready(self) -> bool:
        try:
            answered = httpx.post(f"{self.url}/v1/courses/1/bookings", timeout=1)
        except httpx.HTTPError:
            return False
        assert self._proc is not None
        workers = [c for c in psutil.Process(self._proc.pid).children()
                   if not any("resource_tracker" in part for part in c.cmdline())]
        # One worker serves in uvicorn's own process; several are its children.
        return answered.status_code == 201 and (self.args.workers == 1
                                                or len(workers) >= self.args.workers)

    def measure(self, when: str) -> BareRun | None:
        """What wrk got from the bare stack; None if any answer was not 201."""
        done = subprocess.run(
            ["wrk", f"-t{self.args.threads}", f"-c{self.args.concurrency}", f"-d{CEILING_S}s",
             "--timeout", "10s", "--latency", "-s", str(self.script), self.url],
            capture_output=True, text=True, timeout=CEILING_S + 60)
        rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
        if rate is None or "Non-2xx" in done.stdout:
            print(f"Ceiling {when}: wrk did not measure it cleanly:\n{done.stdout}", flush=True)
            return None
        run = BareRun(round(float(rate.group(1)), 1), _wrk_p99_ms(done.stdout))
        print(f"Ceiling {when}: the bare stack answered {run.rps} req/s, p99 {run.p99_ms} ms.",
              flush=True)
        return run

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


@contextlib.contextmanager
def _ceiling(args: argparse.Namespace, settings: Settings,
             work: Path) -> Iterator[Ceiling | None]:
    """The ceiling's server for the whole run (idle during the rush), or None with
    --no-ceiling."""
    if getattr(args, "no_ceiling", False):
        yield None
        return
    ceiling = Ceiling(args, mint(settings.secret, "resident", "bench-ceiling"), work)
    try:
        ceiling.start()
        yield ceiling
    finally:
        ceiling.stop()


class CpuMeter:
    """CPU seconds of the service's processes, of Redis and of Postgres (each found by the
    socket its URL names, with every child; a private cluster: all its nodes; a store on
    another machine counts as None)."""

    def __init__(self, service: Service, settings: Settings,
                 cluster: EmbeddedCluster | None = None) -> None:
        redis = ([_process(node.process.pid if node.process else None)
                  for node in cluster.nodes] if cluster is not None
                 else [_listener(_redis_address(str(settings.redis_url)))])
        self.roots = {"service": [_process(service.pid)], "redis": redis,
                      "postgres": [_listener(_postgres_address(str(settings.database_url)))]}

    def sample(self) -> dict[str, float | None]:
        return {name: _trees_cpu(roots) for name, roots in self.roots.items()}


def _trees_cpu(roots: list[psutil.Process | None]) -> float | None:
    times = [_tree_cpu(root) if root else None for root in roots]
    return None if not times or None in times else sum(t for t in times if t is not None)


def _process(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def _tree_cpu(root: psutil.Process) -> float | None:
    """CPU of a process, its live descendants and the children it has reaped."""
    try:
        times = root.cpu_times()
        processes = root.children(recursive=True)
    except psutil.Error:
        return None
    total = times.user + times.system + times.children_user + times.children_system
    for process in processes:
        with contextlib.suppress(psutil.Error):
            child = process.cpu_times()
            total += child.user + child.system
    return total


Address = str | tuple[str, int]


def _redis_address(url: str) -> Address:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return parts.hostname or "localhost", parts.port or 6379


def _postgres_address(url: str) -> Address:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _listener(address: Address) -> psutil.Process | None:
    """The local process listening on `address` (a Unix socket path, or host and port)."""
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}
    if isinstance(address, tuple) and address[0] not in local:
        return None
    try:
        connections = psutil.net_connections(kind="unix" if isinstance(address, str)
                                             else "inet")
    except psutil.Error:
        return None
    pids = {conn.pid for conn in connections
            if conn.pid and (conn.laddr == address if isinstance(address, str) else
                             conn.status == psutil.CONN_LISTEN and conn.laddr
                             and conn.laddr[1] == address[1])}
    # Postgres's backends inherit the listening socket: the root is the one whose parent
    # does not hold it.
    roots = [p for p in map(_process, pids) if p is not None and p.ppid() not in pids]
    return roots[0] if len(roots) == 1 else None


def _children_cpu() -> float:
    """CPU of the child processes this process has waited for (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _delta(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def read_counts(work: Path, threads: int) -> tuple[Counter[str], int]:
    """Answers by status (and code) that wrk's threads saw, as of their last checkpoint, and
    how many residents they had started."""
    counts: Counter[str] = Counter()
    started = 0
    for t in range(threads):
        path = work / f"wrk-{t}-counts.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            key, n = line.rsplit(" ", 1)
            if key == "#started":
                started += int(n)
            else:
                counts[key] += int(n)
    return counts, started


async def _verify(settings: Settings, release: Release, received: set[str],
                  opens_at: float) -> tuple[CheckReport, float | None]:
    from booking.core.db import create_pool
    from booking.core.stores import open_redis

    pool = await create_pool(str(settings.database_url), 2)
    redis = open_redis(str(settings.redis_url), cluster=settings.redis_cluster)
    try:
        report = await check_invariants(pool, redis, received, course_ids=release.course_ids)
        row = await pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(created_at)) AS last FROM bookings "
            "WHERE course_id = ANY($1::bigint[]) AND status = 'confirmed'", release.course_ids)
    finally:
        await redis.aclose()
        await pool.close()
    sold_out = row["n"] == len(release.course_ids) * release.seats
    sellout_s = float(row["last"]) - opens_at if sold_out and row["last"] else None
    return report, sellout_s


@dataclass
class Seen:
    """What the rush saw: wrk's answers, the residents it started, what the service itself
    counted (grab outcomes, latency by status), the rush, when the release sold out (None: it
    did not) and how long each decision took by the crowd's own clock (bench_waits.py)."""

    counts: Counter[str]
    started: int
    service: ServiceView
    rush: Rush
    sellout_s: float | None
    waits: Waits


def _report(args: argparse.Namespace, seen: Seen, cpu: dict[str, float | None],
            ceiling: tuple[BareRun | None, BareRun | None],
            report: CheckReport) -> dict[str, object]:
    figures = _figures(args, seen, cpu, ceiling, report)
    _print_summary(args, seen, figures, report)
    return figures


def _figures(args: argparse.Namespace, seen: Seen, cpu: dict[str, float | None],
             ceiling: tuple[BareRun | None, BareRun | None],
             report: CheckReport) -> dict[str, object]:
    counts, rush = seen.counts, seen.rush
    wrk = next((json.loads(line.removeprefix("BENCH_WRK "))
                for line in rush.output.splitlines() if line.startswith("BENCH_WRK ")), {})
    decisions = sum(n for key, n in counts.items()
                    if key.split(":")[0] in ("200", "201", "409"))
    confirmed = counts.get("201", 0)
    decisions_per_s = decisions / rush.seconds
    return {
        "cut_short": rush.cut_short,
        "term_cap": args.term_cap,
        "decisions_per_s": round(decisions_per_s, 1),
        "confirmed_per_s": round(confirmed / seen.sellout_s, 1) if seen.sellout_s else None,
        **_ceiling_figures(decisions_per_s, ceiling),
        "decision_wait_ms": wait_figures(every_answer(seen.waits)),
        "decision_wait_ms_by_status": {status: wait_figures(by_tenths)
                                       for status, by_tenths in seen.waits.items()},
        "p50_ms": wrk.get("p50_us", 0) / 1000, "p95_ms": wrk.get("p95_us", 0) / 1000,
        "p99_ms": wrk.get("p99_us", 0) / 1000, "max_ms": wrk.get("max_us", 0) / 1000,
        "sellout_s": round(seen.sellout_s, 3) if seen.sellout_s else None,
        "rush_s": round(rush.seconds, 3), "decisions": decisions, "confirmed": confirmed,
        "residents_started": seen.started,
        "status_counts": dict(sorted(counts.items())),
        "status_5xx": sum(n for key, n in counts.items()
                          if key.split(":")[-1].startswith("5")),
        "flood_answers": {key: n for key, n in counts.items() if key.startswith("flood:")},
        "service_grab_outcomes": seen.service.outcomes(),
        "service_latency": seen.service.latency(),
        "socket_errors": wrk.get("socket_errors", {}),
        "violations": len(report.violations),
        **_cpu_figures(cpu, decisions),
        "options": {k: getattr(args, k) for k in ("courses", "seats", "residents",
                                                  "concurrency", "workers", "threads", "flood",
                                                  "max_seconds")},
    }


def _ceiling_figures(decisions_per_s: float,
                     ceiling: tuple[BareRun | None, BareRun | None]) -> dict[str, object]:
    before, after = ceiling
    measured = [run.rps for run in (before, after) if run]
    mean = sum(measured) / len(measured) if measured else None
    return {"ceiling_rps": round(mean, 1) if mean else None,
            "ceiling_rps_before": before.rps if before else None,
            "ceiling_rps_after": after.rps if after else None,
            "ceiling_p99_ms_before": before.p99_ms if before else None,
            "ceiling_p99_ms_after": after.p99_ms if after else None,
            "ratio": round(decisions_per_s / mean, 3) if mean else None}


def _cpu_figures(cpu: dict[str, float | None], decisions: int) -> dict[str, object]:
    def seconds(name: str) -> float | None:
        value = cpu.get(name)
        return round(value, 2) if value is not None else None

    def ms_per_decision(name: str) -> float | None:
        value = cpu.get(name)
        return round(value * 1000 / decisions, 4) if value is not None and decisions else None

    redis, postgres = cpu.get("redis"), cpu.get("postgres")
    stores = redis + postgres if redis is not None and postgres is not None else None
    return {"client_cpu_s": seconds("client"), "server_cpu_s": seconds("service"),
            "redis_cpu_s": seconds("redis"), "postgres_cpu_s": seconds("postgres"),
            "stores_cpu_s": round(stores, 2) if stores is not None else None,
            "cpu_ms_per_decision": {name: ms_per_decision(name)
                                    for name in ("service", "redis", "postgres")}}


def _print_summary(args: argparse.Namespace, seen: Seen, figures: dict[str, object],
                   report: CheckReport) -> None:
    f = figures
    print(f"""
Rush of {args.residents} residents at {args.courses} courses x {args.seats} seats
{_cut_short_line(args, seen, figures)}\
  decisions (201/200/409): {f['decisions']} in {f['rush_s']:.2f} s = {f['decisions_per_s']}/s
  confirmed bookings:      {f['confirmed']}, {_sellout(figures)}
{_ceiling_line(figures)}\
  decisions waited:        {_waits_line(f['decision_wait_ms'])}
  waited, by answer:       {_by_status_line(f['decision_wait_ms_by_status'])}
  wrk's latency:           p50/p95/p99/max {f['p50_ms']} / {f['p95_ms']} / {f['p99_ms']} / \
{f['max_ms']} ms (every request, with the samples wrk adds for slow answers)
  answers:                 {f['status_counts']}
  (flood answers are the abuser's; decisions and rates count honest residents only)
  service's grab outcomes: {f['service_grab_outcomes']} (its /metrics)
  service's own latency:   {_latency_line(f['service_latency'])}
  socket errors:           {f['socket_errors']}
  CPU seconds:             client (wrk) {f['client_cpu_s']}, service {f['server_cpu_s']}, \
Redis {f['redis_cpu_s']}, Postgres {f['postgres_cpu_s']}
  CPU ms per decision:     {_per_decision(f['cpu_ms_per_decision'])}
{report.summary()}""", flush=True)


def _cut_short_line(args: argparse.Namespace, seen: Seen, figures: dict[str, object]) -> str:
    if not seen.rush.cut_short:
        return ""
    return (f"  RUSH CUT SHORT by --max-seconds {args.max_seconds}: {seen.started} of "
            f"{args.residents} residents started, and not all got their answers. The figures "
            f"are what wrk saw until then (each wrk thread's last up to 200 answers may be "
            f"missing); the service counted {answers(seen.service.outcomes())} grab answers. "
            f"The release {'sold out' if figures['sellout_s'] else 'did not sell out'}.\n")


def _waits_line(waits: object) -> str:
    assert isinstance(waits, dict)
    if not waits["decisions_timed"]:
        return "not timed"
    return (f"p50/p95/p99/max {waits['p50']} / {waits['p95']} / {waits['p99']} / "
            f"{waits['max']} ms ({waits['decisions_timed']} decisions, each timed by the crowd "
            "from its request to its answer)")


def _by_status_line(by_status: object) -> str:
    assert isinstance(by_status, dict)
    if not by_status:
        return "not timed"
    return "; ".join(f"{status}: p50 {w['p50']}, p99 {w['p99']} ms ({w['decisions_timed']})"
                     for status, w in by_status.items())


def _latency_line(latency: dict[str, dict[str, float | None]]) -> str:
    """Per status, the buckets of the service's histogram its p50 and p99 fall in."""
    def bound(ms: float | None) -> str:
        return f"<= {ms:g} ms" if ms is not None else "beyond its last bucket"

    return "; ".join(f"{status}: p50 {bound(f['p50_le_ms'])}, p99 {bound(f['p99_le_ms'])} "
                     f"({f['answers']:g} answers)"
                     for status, f in latency.items()) or "not measured"


def _sellout(figures: dict[str, object]) -> str:
    if figures["sellout_s"] is None:
        return "the release did not sell out"
    return f"sold out after {figures['sellout_s']} s = {figures['confirmed_per_s']}/s"


def _ceiling_line(figures: dict[str, object]) -> str:
    if figures["ceiling_rps"] is None:
        return ""
    return (f"  ceiling (bare stack):    {figures['ceiling_rps']} req/s (before "
            f"{figures['ceiling_rps_before']}, after {figures['ceiling_rps_after']}); "
            f"ratio {figures['ratio']}\n"
            f"  ceiling's own p99:       {figures['ceiling_p99_ms_before']} ms before, "
            f"{figures['ceiling_p99_ms_after']} ms after (the bare stack under the same wrk)\n")


def _per_decision(per: object) -> str:
    assert isinstance(per, dict)
    return ", ".join(f"{name} {value}" for name, value in per.items())
