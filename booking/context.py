"""What every handler needs, opened once per process and kept on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from litestar import Request

from booking.auth import Authenticator
from booking.ledger import BookingLedger
from booking.ratelimit import RateLimiter
from booking.readcache import ReadCache
from booking.reconcile import CourseLoader
from booking.seats import SeatGate
from booking.settings import Settings


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
