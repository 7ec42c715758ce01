"""`booking bench`: start the service, publish a release, rush it with wrk, check, report.

wrk (a C load generator, Debian package `wrk`) drives `bench_rush.lua`, which gives every
request its own resident token and moves residents on to another course when told sold_out.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import httpx
import psutil

from booking.core.auth import mint
from booking.core.settings import ConfigError, Settings
from booking.core.stores import running
from booking.ops.check import CheckReport, check_invariants, read_received
from booking.ops.rehearsal import Release, publish_release
from booking.ops.service import Service, ServiceError

OPENING_LEAD_S = 3.0
HOT_SHARE = 0.9
CHOICES = 5


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise ConfigError("booking bench needs wrk: apt-get install wrk.")
    if not 0 <= args.flood <= 0.9:
        raise ConfigError("--flood is a share of the requests, from 0 to 0.9.")
    if min(args.courses, args.seats, args.residents, args.concurrency, args.workers,
           args.threads) < 1:
        raise ConfigError("--courses, --seats, --residents, --concurrency, --workers and "
                          "--threads must be positive.")
    settings = Settings.from_env()
    if not (settings.database_url and settings.redis_url):
        bench_dir = settings.data_dir / "bench"
        shutil.rmtree(bench_dir, ignore_errors=True)  # a fresh ledger for every bench run
        settings = Settings.from_env({**os.environ, "BOOKING_DATA_DIR": str(bench_dir)})
    with running(settings) as ready, tempfile.TemporaryDirectory(prefix="bench-") as work:
        service = Service(_service_env(ready, args), Path(work) / "server.log", port=args.port)
        try:
            service.start()
        except ServiceError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            figures = _rush(ready, args, service, Path(work))
        finally:
            service.stop(grace_s=30)
    print(json.dumps(figures))
    return 0 if not figures["violations"] and not figures["status_5xx"] else 1


def _service_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": str(settings.database_url),
            "REDIS_URL": str(settings.redis_url), "BOOKING_SECRET": settings.secret,
            "BOOKING_WORKERS": str(args.workers)}


def _rush(settings: Settings, args: argparse.Namespace, service: Service,
          work: Path) -> dict[str, object]:
    base = service.base_url
    print(f"Publishing {args.courses} courses x {args.seats} seats ...", flush=True)
    release = asyncio.run(publish_release(base, settings.secret, courses=args.courses,
                                          seats=args.seats, opens_in_s=60))
    print(f"Minting {args.residents} resident tokens ...", flush=True)
    tokens = work / "tokens.txt"
    tokens.write_text("\n".join(mint(settings.secret, "resident", f"bench-{n}")
                                for n in range(args.residents)) + "\n")
    opens_at = time.time() + OPENING_LEAD_S + len(release.course_ids) * 0.005
    asyncio.run(_move_opening(base, settings.secret, release, opens_at))

    env = {**os.environ, "BENCH_TOKENS": str(tokens),
           "BENCH_COURSES": ",".join(map(str, release.course_ids)),
           "BENCH_HOT": str(len(release.hot)),
           "BENCH_HOT_SHARE": str(HOT_SHARE), "BENCH_CHOICES": str(CHOICES),
           "BENCH_THREADS": str(args.threads), "BENCH_OUT": str(work / "wrk"),
           "BENCH_FLOOD": str(args.flood)}
    script = work / "bench_rush.lua"
    script.write_text(resources.files("booking.ops").joinpath("bench_rush.lua").read_text())
    processes = _service_processes(service)
    stores_before = _stores_cpu()
    server_before = _cpu(processes)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(max(0.0, opens_at - time.time()))
    print(f"Sales open: {args.residents} residents rush over {args.concurrency} connections.",
          flush=True)
    started = time.monotonic()
    wrk = subprocess.Popen(
        ["wrk", f"-t{args.threads}", f"-c{args.concurrency}", f"-d{args.max_seconds}s",
         "--timeout", "10s", "-s", str(script), base], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not all((work / f"wrk-{t}-done").exists() for t in range(args.threads)):
        if wrk.poll() is not None:
            break
        time.sleep(0.01)
    rush_s = time.monotonic() - started
    wrk.send_signal(signal.SIGINT)
    output, _ = wrk.communicate(timeout=60)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = _cpu(processes) - server_before
    stores_cpu = _stores_cpu() - stores_before
    client_cpu = (client_after.ru_utime + client_after.ru_stime
                  - client_before.ru_utime - client_before.ru_stime)
    counts = _read_counts(work, args.threads)
    received = read_received(work.glob("wrk-*-ids.txt"))
    report, sellout_s = asyncio.run(_verify(settings, release, received, opens_at))
    return _report(args, output, counts, rush_s, sellout_s, client_cpu, server_cpu,
                   stores_cpu, report)


async def _move_opening(base: str, secret: str, release: Release, opens_at: float) -> None:
    """Open every course of the release at the same instant, a moment from now."""
    from datetime import UTC, datetime

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


def _service_processes(service: Service) -> list[psutil.Process]:
    root = psutil.Process(service.pid)
    return [root, *root.children(recursive=True)]


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _stores_cpu() -> float:
    """CPU of every Postgres and Redis process on the machine (the stores the service uses)."""
    names = ("postgres", "redis-server")
    return _cpu([p for p in psutil.process_iter(["name"])
                 if (p.info["name"] or "").startswith(names)])


def _read_counts(work: Path, threads: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for t in range(threads):
        path = work / f"wrk-{t}-counts.txt"
        if path.exists():
            for line in path.read_text().splitlines():
                key, n = line.rsplit(" ", 1)
                counts[key] += int(n)
    return counts


async def _verify(settings: Settings, release: Release, received: set[str],
                  opens_at: float) -> tuple[CheckReport, float | None]:
    from booking.core.db import create_pool
    from booking.core.stores import open_redis

    pool = await create_pool(str(settings.database_url), 2)
    redis = open_redis(str(settings.redis_url))
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


def _report(args: argparse.Namespace, wrk_output: str, counts: Counter[str], rush_s: float,
            sellout_s: float | None, client_cpu: float, server_cpu: float, stores_cpu: float,
            report: CheckReport) -> dict[str, object]:
    wrk = next((json.loads(line.removeprefix("BENCH_WRK "))
                for line in wrk_output.splitlines() if line.startswith("BENCH_WRK ")), {})
    decisions = sum(n for key, n in counts.items()
                    if key.split(":")[0] in ("200", "201", "409"))
    confirmed = counts.get("201", 0)
    status_5xx = sum(n for key, n in counts.items() if key.split(":")[-1].startswith("5"))
    flood = {key: n for key, n in counts.items() if key.startswith("flood:")}
    figures: dict[str, object] = {
        "decisions_per_s": round(decisions / rush_s, 1),
        "confirmed_per_s": round(confirmed / sellout_s, 1) if sellout_s else None,
        "p50_ms": wrk.get("p50_us", 0) / 1000, "p95_ms": wrk.get("p95_us", 0) / 1000,
        "p99_ms": wrk.get("p99_us", 0) / 1000, "max_ms": wrk.get("max_us", 0) / 1000,
        "sellout_s": round(sellout_s, 3) if sellout_s else None,
        "rush_s": round(rush_s, 3), "decisions": decisions, "confirmed": confirmed,
        "status_counts": dict(sorted(counts.items())), "status_5xx": status_5xx,
        "flood_answers": flood,
        "socket_errors": wrk.get("socket_errors", {}),
        "violations": len(report.violations),
        "client_cpu_s": round(client_cpu, 2), "server_cpu_s": round(server_cpu, 2),
        "stores_cpu_s": round(stores_cpu, 2),
        "options": {k: getattr(args, k) for k in ("courses", "seats", "residents",
                                                  "concurrency", "workers", "threads", "flood")},
    }
    print(f"""
Rush of {args.residents} residents at {args.courses} courses x {args.seats} seats
  decisions (201/200/409): {decisions} in {rush_s:.2f} s = {figures['decisions_per_s']}/s
  confirmed bookings:      {confirmed}, sold out after {figures['sellout_s']} s = \
{figures['confirmed_per_s']}/s
  latency p50/p95/p99/max: {figures['p50_ms']} / {figures['p95_ms']} / {figures['p99_ms']} / \
{figures['max_ms']} ms
  answers:                 {dict(sorted(counts.items()))}
  (flood answers are the abuser's; decisions and rates count honest residents only)
  socket errors:           {figures['socket_errors']}
  CPU seconds:             client (wrk) {figures['client_cpu_s']}, service \
{figures['server_cpu_s']}, Postgres+Redis {figures['stores_cpu_s']}
{report.summary()}""", flush=True)
    return figures
