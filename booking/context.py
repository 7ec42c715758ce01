"""What every handler needs, opened once per process and kept on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from litestar import Request

from booking.core.auth import Authenticator
from booking.core.readcache import ReadCache
from booking.core.settings import Settings
from booking.ledger.commit import BookingLedger
from booking.seats import SeatGate
from booking.seats.ratelimit import RateLimiter
from booking.seats.reconcile import CourseLoader


@dataclass(slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    gate: SeatGate
    ledger: BookingLedger
    loader: CourseLoader
    auth: Authenticator
    reads: ReadCache
    limiter: RateLimiter


def services(request: Request) -> Services:
    return request.app.state.services
