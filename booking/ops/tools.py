"""Small operator commands: `booking db upgrade` (alias `db init`), `booking token`,
`booking reconcile`; and the two start-up steps `booking serve` shares with them.

The seat gate is imported inside the functions: it loads prometheus_client, which `booking
serve` must import only after it has named the metrics folder."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

import uvloop

from booking.core.settings import Settings
from booking.core.stores import Stores, connected, running

if TYPE_CHECKING:
    import asyncpg

    from booking.seats.reconcile import ReconcileReport


def db_upgrade(_: argparse.Namespace) -> int:
    """Create the schema on an empty database, or apply the migrations it lacks."""
    async def run(settings: Settings) -> None:
        async with connected(settings) as stores, stores.pool.acquire() as conn:
            await upgrade_schema(conn)

    with running(Settings.from_env()) as ready:
        asyncio.run(run(ready))
    return 0


async def upgrade_schema(conn: asyncpg.Connection) -> list[str]:
    """Bring the database to the current schema and say what that took."""
    from booking.core.db import is_empty
    from booking.core.migrations import migrations, upgrade

    empty = await is_empty(conn)
    applied = await upgrade(conn)
    if empty and applied:
        print(f"Empty database: applied schema.sql; recorded {', '.join(applied)}.")
    else:
        for label in applied:
            print(f"Applied migration {label}.")
    print(f"Schema up to date: {migrations()[-1].label}.", flush=True)
    return applied


# Courses rebuilt at once before serving (and connections to do it with): a course costs some
# seven round trips, and a city's courses of many terms are tens of thousands.
REBUILD_CONCURRENCY = 8


async def rebuild_gate(stores: Stores, settings: Settings) -> ReconcileReport:
    """Every course's Redis seat counters rebuilt from Postgres, REBUILD_CONCURRENCY at a time
    (the stores' pool should have as many connections)."""
    from booking.seats import SeatGate
    from booking.seats.reconcile import reconcile_all

    report = await reconcile_all(stores.pool, SeatGate(stores.redis),
                                 settings.pending_timeout_s, concurrency=REBUILD_CONCURRENCY)
    report.quotas = await rebuild_quotas(stores, settings)
    return report


async def rebuild_quotas(stores: Stores, settings: Settings) -> int:
    """Every resident's term-cap quota rebuilt from Postgres (stale ones dropped); how many
    residents hold seats in capped terms."""
    from booking.ledger.term_cap import all_held_capped
    from booking.seats.quota import TermQuota

    async for key in stores.redis.scan_iter(match="quota:*", count=1000):
        await stores.redis.delete(key)  # before serving: no take is in flight
    quota = TermQuota(stores.redis, settings.pending_timeout_s)
    held = await all_held_capped(stores.pool)
    for resident_id, seats in held.items():
        await quota.rebuild(resident_id, seats)
    return len(held)


def reconcile(_: argparse.Namespace) -> int:
    async def run(settings: Settings) -> ReconcileReport:
        async with connected(settings, pool_size=REBUILD_CONCURRENCY) as stores:
            return await rebuild_gate(stores, settings)

    with running(Settings.from_env()) as ready:
        report = uvloop.run(run(ready))
    print(f"Reconciled {report.courses} courses: {report.restored} bookings restored, "
          f"{report.given_back} seats given back; term-cap quotas of {report.quotas} "
          "residents rebuilt.")
    return 0


def token(args: argparse.Namespace) -> int:
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
    print(mint(settings.secret, "resident", args.id, days=args.days, tier=args.tier))
    return 0
