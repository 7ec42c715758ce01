"""The `booking` command: serve, db init, token, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from booking.core.settings import ConfigError, Settings
from booking.core.stores import open_pool, running

if TYPE_CHECKING:

    from booking.ops.demo import DemoTerm


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except ConfigError as exc:
        print(f"booking: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="booking", description=__doc__)
    sub = parser.add_subparsers(title="commands")

    serve = sub.add_parser("serve", help="run the HTTP service (embedded stores by default)")
    serve.add_argument("--demo", action="store_true",
                       help="load a demo term whose sales open a minute after start")
    serve.add_argument("--crowd", type=int, default=500, metavar="N",
                       help="with --demo: N simulated residents rush the hot courses at the "
                            "opening (default 500, 0 for none)")
    serve.add_argument("--host", help="listen address (BOOKING_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (BOOKING_PORT, default 8000)")
    serve.add_argument("--workers", type=int,
                       help="worker processes (BOOKING_WORKERS, default one per core)")
    serve.set_defaults(run=_serve)

    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(title="db commands")
    db_init = db_sub.add_parser("init", help="apply schema.sql (safe to repeat)")
    db_init.set_defaults(run=_db_init)

    token = sub.add_parser("token", help="print a bearer token signed with BOOKING_SECRET")
    token.add_argument("role", choices=["resident", "venue", "operator"])
    token.add_argument("id", nargs="?", help="resident id, or venue id for a venue token")
    token.add_argument("--days", type=float, default=30, help="validity in days (default 30)")
    token.set_defaults(run=_token)

    release = sub.add_parser("release", help="publish a release for a load test, via the API")
    release.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    release.add_argument("--courses", type=int, default=60, help="courses (default 60)")
    release.add_argument("--seats", type=int, default=20, help="seats per course (default 20)")
    release.add_argument("--opens-in", type=float, default=30, metavar="SECONDS",
                         help="sales open this many seconds from now (default 30)")
    release.add_argument("--paid-share", type=float, default=0.0, metavar="SHARE",
                         help="share of the courses (0-1) with a price, whose grabs are holds "
                              "(default 0)")
    release.add_argument("--hold-minutes", type=int, default=10,
                         help="how long a hold waits for its payment (default 10)")
    release.add_argument("--out", default="loadtest/results/release.json",
                         help="where to write the release (JSON)")
    release.set_defaults(run=_release)

    check = sub.add_parser("check", help="verify every invariant against Postgres and Redis")
    check.add_argument("--received", nargs="*", default=[], metavar="PATH",
                       help="files or folders of booking ids that clients were told about")
    check.set_defaults(run=_check)

    bench = sub.add_parser("bench", help="rush a release with wrk and report the figures")
    _bench_arguments(bench)
    bench.set_defaults(run=_bench)

    pay = sub.add_parser("pay", help="act as the payment provider: pay a held booking")
    pay.add_argument("booking_id", help="the held booking to pay")
    pay.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    pay.add_argument("--amount", type=int, metavar="CENTS",
                     help="amount paid (default: the course's price, read from Postgres)")
    pay.add_argument("--ref", help="provider reference (default: a new random one)")
    pay.set_defaults(run=_pay)

    reconcile = sub.add_parser("reconcile",
                               help="rebuild the Redis seat counters from Postgres")
    reconcile.set_defaults(run=_reconcile)
    return parser


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`booking bench` options (kept here so that parsing imports nothing heavy)."""
    parser.add_argument("--courses", type=int, default=400, help="courses (default 400)")
    parser.add_argument("--seats", type=int, default=25, help="seats per course (default 25)")
    parser.add_argument("--residents", type=int, default=100_000,
                        help="residents in the crowd (default 100000)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="open connections (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="service worker processes (default: one per core)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--port", type=int, default=8077, help="service port (default 8077)")
    parser.add_argument("--flood", type=float, default=0.0, metavar="SHARE",
                        help="share of requests (0-0.9) sent by one abuser from one address, "
                             "to show that refusing them (429) does not slow honest grabs")
    parser.add_argument("--max-seconds", type=int, default=300,
                        help="stop the rush after this long (default 300)")


async def _prepare(settings: Settings, *, demo: bool) -> DemoTerm | None:
    """Schema (on an empty database, or to bring an older one up to date), the demo term if
    asked, and a gate rebuilt from Postgres."""
    from booking.core.db import apply_schema, is_empty
    from booking.core.stores import open_redis
    from booking.ops.demo import load_demo
    from booking.seats import SeatGate
    from booking.seats.reconcile import reconcile_all

    pool = await open_pool(settings)
    redis = open_redis(str(settings.redis_url))
    try:
        async with pool.acquire() as conn:
            if await is_empty(conn):
                print("Empty database: applying schema.sql")
            await apply_schema(conn)  # safe to repeat; adds what an older database lacks
            term = await load_demo(conn) if demo else None
        report = await reconcile_all(pool, SeatGate(redis), settings.pending_timeout_s)
        print(f"Seat gate rebuilt from Postgres: {report.courses} courses, "
              f"{report.restored} bookings restored, {report.given_back} stale seats given back.")
        if term is not None:
            _print_demo(settings, term)
        return term
    finally:
        await redis.aclose()
        await pool.close()


def _start_crowd(settings: Settings, term: DemoTerm, residents: int) -> None:
    """The demo's crowd runs beside the server, in a thread of its own."""
    import threading

    from booking.ops.demo import run_crowd

    base = f"http://127.0.0.1:{settings.port}"
    threading.Thread(target=lambda: asyncio.run(run_crowd(base, settings.secret, term, residents)),
                     name="demo-crowd", daemon=True).start()


def _print_demo(settings: Settings, term: DemoTerm) -> None:
    from booking.core.auth import mint

    base = f"http://{settings.host}:{settings.port}"
    resident = mint(settings.secret, "resident", "demo-resident-1")
    hot = term.hot_course_ids[0] if term.hot_course_ids else 1
    paid = term.paid_course_id or hot
    state = "loaded" if term.loaded else "already present, kept as it was"
    print(f"""
Demo term {state}. Sales open at {term.opens_at:%H:%M:%S} UTC (hot courses: {term.hot_course_ids}).
  export TOKEN={resident}
  curl -s {base}/v1/courses?available=true
  curl -s {base}/v1/courses/{hot}
  curl -s -X POST {base}/v1/courses/{hot}/bookings -H "Authorization: Bearer $TOKEN"
  curl -s {base}/v1/me/bookings -H "Authorization: Bearer $TOKEN"
Once the hot course is sold out, wait for a seat (a cancelled one comes to you by itself):
  curl -s -X POST {base}/v1/courses/{hot}/waitlist -H "Authorization: Bearer $TOKEN"
A paid course (course {paid}) holds your seat for 10 minutes; play the payment provider:
  curl -s -X POST {base}/v1/courses/{paid}/bookings -H "Authorization: Bearer $TOKEN"
  booking pay --url {base} <booking id from that answer>
More tokens: booking token resident <id> | booking token venue <venue id> | booking token operator
""", flush=True)


def _serve(args: argparse.Namespace) -> int:
    import shutil

    settings = Settings.from_env()
    # Before anything imports prometheus_client: every worker writes its metrics here.
    metrics_dir = settings.data_dir.resolve() / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    import uvicorn

    overrides = {"BOOKING_HOST": args.host, "BOOKING_PORT": args.port,
                 "BOOKING_WORKERS": args.workers}
    env = {**os.environ, **{k: str(v) for k, v in overrides.items() if v is not None}}
    settings = Settings.from_env(env)
    with running(settings) as ready:
        term = asyncio.run(_prepare(ready, demo=args.demo))
        if term is not None and term.loaded and args.crowd > 0:
            _start_crowd(ready, term, args.crowd)
        os.environ.update(DATABASE_URL=str(ready.database_url), REDIS_URL=str(ready.redis_url),
                          BOOKING_SECRET=ready.secret, BOOKING_DATA_DIR=str(ready.data_dir))
        # uvicorn re-raises SIGTERM after its shutdown; make that an exit that still runs the
        # `with` above, so the embedded stores are stopped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"Serving on http://{ready.host}:{ready.port} with {ready.workers} worker(s); "
              f"OpenAPI at /schema. Ctrl-C stops.", flush=True)
        uvicorn.run("booking.app:create_app", factory=True, host=ready.host, port=ready.port,
                    workers=ready.workers, access_log=False, log_level="warning", log_config=None,
                    loop="uvloop", http="httptools", backlog=4096)
    return 0


def _db_init(_: argparse.Namespace) -> int:
    from booking.core.db import apply_schema

    async def run(settings: Settings) -> None:
        pool = await open_pool(settings)
        try:
            async with pool.acquire() as conn:
                await apply_schema(conn)
        finally:
            await pool.close()

    with running(Settings.from_env()) as ready:
        asyncio.run(run(ready))
    print("Schema applied.")
    return 0


def _token(args: argparse.Namespace) -> int:
    from booking.core.auth import mint

    settings = Settings.from_env()
    if args.role == "operator":
        print(mint(settings.secret, "operator", args.id or "operator", days=args.days))
        return 0
    if not args.id:
        print(f"booking: a {args.role} token needs an id, e.g. `booking token {args.role} 1`.",
              file=sys.stderr)
        return 2
    if args.role == "venue":
        if not args.id.isdigit() or int(args.id) < 1:
            print("booking: a venue id is a positive whole number.", file=sys.stderr)
            return 2
        print(mint(settings.secret, "venue", f"venue-{args.id}", venue_id=int(args.id),
                   days=args.days))
        return 0
    print(mint(settings.secret, "resident", args.id, days=args.days))
    return 0


def _reconcile(_: argparse.Namespace) -> int:
    from booking.core.stores import open_redis
    from booking.seats import SeatGate
    from booking.seats.reconcile import reconcile_all

    async def run(settings: Settings) -> None:
        pool = await open_pool(settings)
        redis = open_redis(str(settings.redis_url))
        try:
            report = await reconcile_all(pool, SeatGate(redis), settings.pending_timeout_s)
        finally:
            await redis.aclose()
            await pool.close()
        print(f"Reconciled {report.courses} courses: {report.restored} bookings restored, "
              f"{report.given_back} seats given back.")

    with running(Settings.from_env()) as ready:
        asyncio.run(run(ready))
    return 0


def _release(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from booking.ops.rehearsal import publish_release

    if not (1 <= args.courses <= 100_000 and 1 <= args.seats <= 10_000):
        raise ConfigError("--courses must be 1-100000 and --seats 1-10000.")
    if not (0 <= args.paid_share <= 1 and 1 <= args.hold_minutes <= 1440):
        raise ConfigError("--paid-share must be 0-1 and --hold-minutes 1-1440.")
    settings = Settings.from_env()
    release = asyncio.run(publish_release(args.url, settings.secret, courses=args.courses,
                                          seats=args.seats, opens_in_s=args.opens_in,
                                          paid_share=args.paid_share,
                                          hold_minutes=args.hold_minutes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(release.to_dict(), indent=1))
    print(f"Published {args.courses} courses x {args.seats} seats, opening at "
          f"{release.opens_at}; written to {out}.")
    return 0


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from booking.core.stores import open_redis
    from booking.ops.check import check_invariants, read_received

    paths = [Path(p) for p in args.received]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(missing)}.")
    received = read_received(paths) if paths else None

    async def run(settings: Settings) -> bool:
        pool = await open_pool(settings)
        redis = open_redis(str(settings.redis_url))
        try:
            report = await check_invariants(pool, redis, received)
        finally:
            await redis.aclose()
            await pool.close()
        print(report.summary())
        return report.ok

    with running(Settings.from_env(), quiet=True) as ready:
        return 0 if asyncio.run(run(ready)) else 1


def _pay(args: argparse.Namespace) -> int:
    import secrets
    import uuid

    import httpx
    import msgspec

    from booking.core.signing import signed_headers

    try:
        booking_id = str(uuid.UUID(args.booking_id))
    except ValueError as exc:
        raise ConfigError(f"{args.booking_id!r} is not a booking id.") from exc
    settings = Settings.from_env()
    amount = args.amount
    if amount is None:
        with running(settings, quiet=True) as ready:
            amount = asyncio.run(_price_of(ready, booking_id))
    body = msgspec.json.encode({"provider_ref": args.ref or f"demo-{secrets.token_hex(8)}",
                                "booking_id": booking_id, "amount_cents": amount,
                                "status": "paid"})
    try:
        answer = httpx.post(f"{args.url}/v1/payments/callback", content=body, timeout=10,
                            headers=signed_headers(settings.payment_secret, body))
    except httpx.HTTPError as exc:
        raise ConfigError(f"the service at {args.url} did not answer: {exc}.") from exc
    print(f"{answer.status_code} {answer.text}")
    return 0 if answer.status_code == 200 else 1


async def _price_of(settings: Settings, booking_id: str) -> int:
    pool = await open_pool(settings)
    try:
        price = await pool.fetchval(
            "SELECT c.price_cents FROM bookings b JOIN courses c ON c.id = b.course_id "
            "WHERE b.id = $1", booking_id)
    finally:
        await pool.close()
    if price is None:
        raise ConfigError(f"no booking {booking_id}.")
    return price


def _bench(args: argparse.Namespace) -> int:
    from booking.ops.bench import run

    return run(args)
