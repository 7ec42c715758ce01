"""`python -m loadtest.fairness run --mode fcfs|window|lottery`: one whole fairness run.

1. The service: `--url` of a running one (BOOKING_SECRET must be its secret; the checker needs
   its stores as `booking check` does), or a `booking serve` started here on DATABASE_URL /
   REDIS_URL, or on fresh embedded stores under $BOOKING_DATA_DIR/fairness when those are unset.
2. The population (fixed seed) written to `<out>/population.json`; the courses published through
   the API (hottest first) and the release created with a fresh term, opening once the crowd
   has had time to spawn and the bots their lead.
3. Locust headless, one user per resident (loadtest/fairness/crowd.py), until every resident is
   done; its log and CSVs in `<out>/`.
4. A window is drawn by the service itself: wait for its record. A lottery is drawn here, by an
   operator's POST, once its entries have closed.
5. loadtest/fairness_check.py on the release; its verdict is the exit code. The last line is the
   checker's JSON with the run's own figures added under "run".
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from booking.core.auth import mint
from booking.core.settings import ConfigError, Settings
from booking.core.stores import running
from booking.ops.rehearsal import publish_release
from booking.ops.service import Service, ServiceError
from loadtest import fairness_check
from loadtest.fairness import population as populations
from loadtest.fairness.plan import Plan, Timings

CROWD = Path(__file__).resolve().parent / "crowd.py"
DEFAULT_LENGTH_S = {"fcfs": 120.0, "window": 120.0, "lottery": 300.0}  # the run
LOCUST_BOOT_S = 3.0  # Locust's own start, before the first user spawns (about 1 s idle)
MARGIN_S = 2.0
DRAW_WAIT_S = 60.0  # how long after the close a window's draw may take before the run fails
REQUESTS_EACH = 3  # a person's requests at most, for the run's length


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.fairness",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="prepare, rush, draw and check one release")
    run.add_argument("--mode", choices=["fcfs", "window", "lottery"], required=True)
    run.add_argument("--residents", type=int, default=10_000)
    run.add_argument("--courses", type=int, default=160)
    run.add_argument("--seats", type=int, default=25, help="seats per course")
    run.add_argument("--term-cap", type=int, default=1)
    run.add_argument("--wishes", type=int, default=3, help="wishes per resident")
    run.add_argument("--seed", type=int, default=populations.DEFAULT_SEED,
                     help="the population's seed (the same population for every mode)")
    run.add_argument("--window-s", type=int, default=int(DEFAULT_LENGTH_S["window"]),
                     help="window: entries stay open this long")
    run.add_argument("--lottery-s", type=int, default=int(DEFAULT_LENGTH_S["lottery"]),
                     help="lottery: entries stay open this long, then the draw")
    run.add_argument("--fcfs-s", type=int, default=int(DEFAULT_LENGTH_S["fcfs"]),
                     help="fcfs: residents keep trying this long after the opening")
    run.add_argument("--time-scale", type=float, default=None,
                     help="multiplies the residents' starts and waits (default: the mode's "
                          "length over the issue's, e.g. 5/120 for --window-s 5)")
    run.add_argument("--bot-lead", type=float, default=Timings().bot_lead_s,
                     help="bots poll from this many seconds before the opening")
    run.add_argument("--bot-every", type=float, default=Timings().bot_every_s,
                     help="bots poll this often (s)")
    run.add_argument("--spawn-rate", type=float, default=None,
                     help="Locust users spawned per second (default: all within 8 s)")
    run.add_argument("--url", default=None, help="a running service instead of starting one")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="workers of the service started here")
    run.add_argument("--redraws", type=int, default=fairness_check.REDRAWS)
    run.add_argument("--out", type=Path, default=None,
                     help="the run's folder (default loadtest/results/fairness-<mode>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (args.residents >= 1 and args.courses >= args.wishes >= 1 and args.seats >= 1):
        print("fairness: need residents, at least --wishes courses, and seats", file=sys.stderr)
        return 2
    args.out = args.out or Path("loadtest/results") / f"fairness-{args.mode}"
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in [*args.out.glob("tried-*.jsonl"), *args.out.glob("tried-*.part")]:
        stale.unlink()  # the checker reads every tried file in the folder: the last run's too
    try:
        settings = Settings.from_env()
        if args.url:
            with running(settings, quiet=True) as ready:
                return run(args, ready, args.url.rstrip("/"))
        if not (settings.database_url and settings.redis_url):
            folder = settings.data_dir / "fairness"
            shutil.rmtree(folder, ignore_errors=True)  # a fresh ledger for every run
            settings = Settings.from_env({**os.environ, "BOOKING_DATA_DIR": str(folder)})
        with running(settings) as ready:
            service = Service(service_env(ready, args), args.out / "service.log")
            service.start()
            try:
                return run(args, ready, service.base_url)
            finally:
                service.stop(grace_s=30)
    except (ConfigError, ServiceError, fairness_check.CannotCheck, httpx.HTTPError) as exc:
        print(f"fairness: {exc}", file=sys.stderr)
        return 2


def service_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": str(settings.database_url),
            "REDIS_URL": str(settings.redis_url), "BOOKING_SECRET": settings.secret,
            "BOOKING_PAYMENT_SECRET": settings.payment_secret,
            "BOOKING_WORKERS": str(args.workers),
            "BOOKING_DATA_DIR": str(args.out.resolve() / "service")}


def run(args: argparse.Namespace, settings: Settings, base_url: str) -> int:
    began = time.monotonic()
    figures: dict[str, Any] = {"command": " ".join(["python -m loadtest.fairness",
                                                     *sys.argv[1:]]), "base_url": base_url}
    population = populations.make(args.residents, args.courses, wishes=args.wishes,
                                  seed=args.seed)
    population_file = populations.write(population, args.out / "population.json")
    figures["oversubscribed_hot"] = oversubscription(population, args.seats)
    plan, spawn_rate = asyncio.run(prepare(args, settings.secret, base_url, population_file))
    print(f"Release {plan.release_id} ({plan.mode}): {args.courses} courses x {args.seats} "
          f"seats, {args.residents} residents, opens in "
          f"{plan.opens_at_epoch - time.time():.0f} s; the hottest tenth "
          f"{figures['oversubscribed_hot'][0]}-{figures['oversubscribed_hot'][1]}x "
          "oversubscribed.", flush=True)
    figures["load_before"] = round(os.getloadavg()[0], 2)  # a shared machine: others' share
    crowd_s = rush(args, settings, plan, spawn_rate)
    figures["crowd_s"] = round(crowd_s, 1)
    figures["load_after_crowd"] = round(os.getloadavg()[0], 2)
    if plan.is_draw:
        figures |= asyncio.run(await_draw(plan, settings.secret))
    inputs = fairness_check.Inputs(plan.release_id, population,
                                   fairness_check.read_tried([args.out]), base_url, args.redraws)
    checked = time.monotonic()
    findings = asyncio.run(fairness_check.check(settings, inputs))
    figures["check_s"] = round(time.monotonic() - checked, 1)
    figures["locust"] = locust_figures(args.out / "locust_stats.csv")
    figures["wall_s"] = round(time.monotonic() - began, 1)
    print("\n".join(findings.lines()))
    print(run_line(figures))
    print(json.dumps(findings.as_json() | {"run": figures}), flush=True)
    return 0 if findings.ok else 1


def run_line(figures: dict[str, Any]) -> str:
    """The run's own figures in a sentence: times, the draw's delay, answers' latency."""
    said = [f"run: {figures['wall_s']} s in all, the crowd {figures['crowd_s']} s (1-minute "
            f"load average {figures['load_before']} before it, {figures['load_after_crowd']} "
            "after)"]
    if "drawn_after_close_s" in figures:
        said.append(f"drawn by the service {figures['drawn_after_close_s']} s after the close")
    if "draw_call_s" in figures:
        said.append(f"the operator's draw call took {figures['draw_call_s']} s")
    said += [f"{name}: {f['requests']} requests, {f['failures']} failed, p50 {f['p50_ms']:.0f} "
             f"ms, p99 {f['p99_ms']:.0f} ms" for name, f in figures["locust"].items()
             if name != "Aggregated"]
    return "; ".join(said)


def oversubscription(population: populations.Population, seats: int) -> list[float]:
    """Wishes per seat of the hottest tenth of the courses: [least, most]."""
    hot = population.demand()[:max(1, population.courses // 10)]
    return [round(min(hot) / seats, 1), round(max(hot) / seats, 1)]


def timings_of(args: argparse.Namespace) -> Timings:
    length = {"fcfs": args.fcfs_s, "window": args.window_s, "lottery": args.lottery_s}
    scale = args.time_scale or length[args.mode] / DEFAULT_LENGTH_S[args.mode]
    base = Timings(bot_lead_s=args.bot_lead, bot_every_s=args.bot_every)
    return base.scaled(scale)


async def prepare(args: argparse.Namespace, secret: str, base_url: str,
                  population_file: Path) -> tuple[Plan, float]:
    """Courses through the API, then the release, opening after the crowd's spawn and lead."""
    timings = timings_of(args)
    published = await publish_release(base_url, secret, courses=args.courses, seats=args.seats,
                                      opens_in_s=3600)
    spawn_rate = args.spawn_rate or max(500.0, args.residents / 8)
    lead_s = LOCUST_BOOT_S + args.residents / spawn_rate + timings.bot_lead_s + MARGIN_S
    opens_at = datetime.now(UTC) + timedelta(seconds=lead_s)
    body: dict[str, Any] = {"title": f"Fairness rehearsal ({args.mode})", "mode": args.mode,
                            "course_ids": published.course_ids,
                            "term": f"fairness-{args.mode}-{secrets.token_hex(4)}",
                            "term_cap": args.term_cap, "opens_at": opens_at.isoformat()}
    if args.mode == "fcfs":
        ends_at = opens_at + timedelta(seconds=args.fcfs_s)
    else:
        length = args.window_s if args.mode == "window" else args.lottery_s
        ends_at = opens_at + timedelta(seconds=length)
        body |= {"beacon": f"fairness {secrets.token_hex(16)}", "max_wishes": args.wishes}
        body |= ({"window_s": args.window_s} if args.mode == "window"
                 else {"closes_at": ends_at.isoformat()})
    headers = {"Authorization": f"Bearer {mint(secret, 'operator', 'fairness')}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.post("/v1/releases", json=body, headers=headers)
    if answer.status_code != 201:
        raise ConfigError(f"POST /v1/releases answered {answer.status_code}: {answer.text}")
    release = answer.json()
    closes_at = release.get("closes_at")
    ends = datetime.fromisoformat(closes_at) if closes_at else ends_at
    plan = Plan(args.mode, base_url, release["id"], published.course_ids, opens_at.timestamp(),
                ends.timestamp(), args.term_cap, str(population_file.resolve()),
                str(args.out.resolve()), timings)
    plan.write(args.out / "plan.json")
    return plan, spawn_rate


def rush(args: argparse.Namespace, settings: Settings, plan: Plan, spawn_rate: float) -> float:
    """Locust headless until every resident is done (or its --run-time, a bound); seconds."""
    bound_s = plan.ends_at_epoch - time.time() + 60
    if not plan.is_draw:
        bound_s = max(bound_s, plan.opens_at_epoch - time.time()
                      + plan.timings.longest_s(REQUESTS_EACH) + 60)
    command = [sys.executable, "-m", "locust", "-f", str(CROWD), "--headless",
               "-u", str(args.residents), "-r", f"{spawn_rate:g}",
               "--run-time", f"{math.ceil(bound_s)}s", "--stop-timeout", "15",
               "--host", plan.base_url, "--plan", str(args.out.resolve() / "plan.json"),
               "--csv", str(args.out / "locust"), "--exit-code-on-error", "0", "--only-summary"]
    env = {**os.environ, "BOOKING_SECRET": settings.secret}
    started = time.monotonic()
    with (args.out / "locust.log").open("w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=bound_s + 120, check=False)
    if done.returncode != 0:
        tail = (args.out / "locust.log").read_text().splitlines()[-20:]
        raise ConfigError(f"Locust exited {done.returncode}:\n" + "\n".join(tail))
    return time.monotonic() - started


async def await_draw(plan: Plan, secret: str) -> dict[str, Any]:
    """A window's draw by the service (its record appears), or a lottery's by an operator's
    POST once entries have closed; how long after the close each came."""
    async with httpx.AsyncClient(base_url=plan.base_url, timeout=120) as http:
        await asyncio.sleep(max(0.0, plan.ends_at_epoch - time.time() + 0.2))
        if plan.mode == "lottery":
            started = time.monotonic()
            answer = await http.post(f"/v1/releases/{plan.release_id}/draw", headers={
                "Authorization": f"Bearer {mint(secret, 'operator', 'fairness')}"})
            if answer.status_code not in (200, 201):
                raise fairness_check.CannotCheck(f"the draw answered {answer.status_code}: "
                                                 f"{answer.text[:300]}")
            return {"draw_call_s": round(time.monotonic() - started, 2),
                    "entries_drawn": answer.json()["entries_count"]}
        deadline = time.time() + DRAW_WAIT_S
        while time.time() < deadline:
            answer = await http.get(f"/v1/releases/{plan.release_id}/draw")
            if answer.status_code == 200:
                record = answer.json()
                drawn_at = datetime.fromisoformat(record["drawn_at"]).timestamp()
                return {"drawn_after_close_s": round(drawn_at - plan.ends_at_epoch, 2),
                        "entries_drawn": record["entries_count"]}
            await asyncio.sleep(0.2)
    raise fairness_check.CannotCheck(f"the window was not drawn within {DRAW_WAIT_S:.0f} s of "
                                     "its close")


def locust_figures(stats: Path) -> dict[str, dict[str, float]]:
    """Requests, failures and latency percentiles by request name, from Locust's CSV."""
    if not stats.exists():
        return {}
    figures = {}
    with stats.open() as f:
        for row in csv.DictReader(f):
            figures[row["Name"]] = {"requests": int(row["Request Count"]),
                                    "failures": int(row["Failure Count"]),
                                    "p50_ms": float(row["50%"] or 0),
                                    "p99_ms": float(row["99%"] or 0),
                                    "max_ms": float(row["Max Response Time"] or 0)}
    return figures


if __name__ == "__main__":
    sys.exit(main())
