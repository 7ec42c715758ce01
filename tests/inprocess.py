"""The seat path built in the test's own process, on the test stores: for tests that need to
stop a step half-way (an asyncio.Event), force a batch, or give a worker a clock of its own.

Courses are written straight into Postgres (no service needed); the gate loads them on first
use as it does for any course it does not know.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from conftest import unique
from redis.asyncio import Redis

from booking.bookings import Bookings
from booking.ledger.commit import BookingLedger
from booking.seats import SeatGate
from booking.seats.memory import GateMemory
from booking.seats.quota import TermQuota
from booking.seats.ratelimit import Limit, RateLimiter
from booking.seats.reconcile import CourseLoader
from booking.seats.seating import Seats

PENDING_TIMEOUT_S = 5.0

INSERT_VENUE = """
INSERT INTO venues (name, district, address, lat, lon) VALUES ($1, 'Haidian', '1 Test Road', 39.9,
116.4) RETURNING id
"""
INSERT_COURSE = """
INSERT INTO courses (venue_id, title, category, teacher, starts_at, ends_at, capacity,
                     price_cents, sales_open_at, hold_minutes)
VALUES ($1, $2, 'music', 'Ms Li', $3::timestamptz, $3::timestamptz + interval '2 hours', $4, $5,
        $6, $7) RETURNING id
"""


async def course_row(db: asyncpg.Pool, capacity: int, *, price_cents: int = 0,
                     opens_in_s: float = -1, hold_minutes: int = 10) -> int:
    """A published course written straight into Postgres; its id."""
    now = datetime.now(UTC)
    venue_id = await db.fetchval(INSERT_VENUE, unique("venue"))
    return await db.fetchval(INSERT_COURSE, venue_id, unique("course"), now + timedelta(days=7),
                             capacity, price_cents, now + timedelta(seconds=opens_in_s),
                             hold_minutes)


@dataclass
class SeatPath:
    gate: SeatGate
    loader: CourseLoader
    ledger: BookingLedger
    bookings: Bookings


@contextlib.asynccontextmanager
async def seat_path(pool: asyncpg.Pool, redis: Redis, *, gate: SeatGate | None = None,
                    memory: GateMemory | None = None,
                    quota: TermQuota | None = None) -> AsyncIterator[SeatPath]:
    """Gate, loader, ledger and the Bookings service as the app wires them, on `pool`; with a
    `memory` (its listener started and stopped by the caller) grabs use it as the app's do."""
    gate = gate or SeatGate(redis)
    loader = CourseLoader(pool, gate, PENDING_TIMEOUT_S)
    ledger = BookingLedger(pool, gate, flushers=1, deadline_s=PENDING_TIMEOUT_S / 4)
    limiter = RateLimiter(redis, Limit(0, 1), Limit(0, 1))
    try:
        yield SeatPath(gate, loader, ledger,
                       Bookings(Seats(gate, loader, memory), ledger, limiter, pool, quota))
    finally:
        await ledger.close()
        await gate.close()
        await limiter.close()
