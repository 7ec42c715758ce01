"""`booking serve`: the stores (embedded ones when none are named), the schema brought up to
date, the demo term if asked, the seat gate rebuilt from Postgres, then uvicorn's workers."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from typing import TYPE_CHECKING

import uvloop

from booking.core.settings import Settings
from booking.core.stores import connected, running
from booking.ops.event_loop import UVICORN_LOOP
from booking.ops.http_protocol import UVICORN_HTTP

if TYPE_CHECKING:
    from booking.ops.demo import DemoTerm


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _metrics_dir(settings)  # before anything imports prometheus_client
    import uvicorn

    with running(settings) as ready:
        term = uvloop.run(prepare(ready, demo=args.demo))
        if term is not None and term.loaded and args.crowd > 0:
            from booking.ops.demo import start_crowd

            start_crowd(ready, term, args.crowd)
        os.environ.update(DATABASE_URL=str(ready.database_url), REDIS_URL=str(ready.redis_url),
                          BOOKING_SECRET=ready.secret, BOOKING_DATA_DIR=str(ready.data_dir))
        # uvicorn re-raises SIGTERM after its shutdown; make that an exit that still runs the
        # `with` above, so the embedded stores are stopped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"Serving on http://{ready.host}:{ready.port} with {ready.workers} worker(s); "
              f"OpenAPI at /schema. Ctrl-C stops.", flush=True)
        uvicorn.run("booking.app:create_app", factory=True, host=ready.host, port=ready.port,
                    workers=ready.workers, access_log=False, log_level="warning", log_config=None,
                    loop=UVICORN_LOOP, http=UVICORN_HTTP, backlog=4096,
                    timeout_graceful_shutdown=5)  # live-seat streams never end by themselves
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """The environment, with --host, --port and --workers taking its place when given."""
    Settings.from_env()  # a bad environment is reported before the flags are applied
    overrides = {"BOOKING_HOST": args.host, "BOOKING_PORT": args.port,
                 "BOOKING_WORKERS": args.workers}
    if args.demo:  # a demo shows sign-in codes in its log and offers a simulated payment
        os.environ["BOOKING_DEMO"] = "1"
        os.environ.setdefault("BOOKING_LOGIN_CODES", "log")
    return Settings.from_env({**os.environ, **{k: str(v) for k, v in overrides.items()
                                                if v is not None}})


def _metrics_dir(settings: Settings) -> None:
    """Every worker writes its metrics to this folder; it starts empty on each start."""
    metrics_dir = settings.data_dir.resolve() / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


async def prepare(settings: Settings, *, demo: bool) -> DemoTerm | None:
    """Schema (created on an empty database, migrations applied to an older one), the demo
    term if asked, and a gate rebuilt from Postgres."""
    from booking.ops.demo import load_demo, print_demo
    from booking.ops.tools import REBUILD_CONCURRENCY, rebuild_gate, upgrade_schema

    async with connected(settings, pool_size=REBUILD_CONCURRENCY) as stores:
        async with stores.pool.acquire() as conn:
            await upgrade_schema(conn)
            term = await load_demo(conn) if demo else None
        report = await rebuild_gate(stores, settings)
    print(f"Seat gate rebuilt from Postgres: {report.courses} courses, "
          f"{report.restored} bookings restored, {report.given_back} stale seats given back, "
          f"term-cap quotas of {report.quotas} residents.")
    if term is not None:
        print_demo(settings, term)
    return term
