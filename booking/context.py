"""What every handler needs, opened once per process and kept on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from litestar.datastructures import State

from booking.auth import Authenticator
from booking.ledger import BookingLedger
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


def services(state: State) -> Services:
    return state.services
