"""What a booking's status means, in one place for Python (schema.sql has the SQL twin).

A booking is *active* while it holds a seat: `confirmed`, or `held` (a paid course's seat
waiting for its payment). A grab of a paid course makes a hold lasting the course's
`hold_minutes`; the gate carries that as `hold_s` (0 for a free course).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

Status = Literal["confirmed", "held", "cancelled", "expired"]
ACTIVE: tuple[Status, ...] = ("confirmed", "held")


def is_active(status: str) -> bool:
    return status in ACTIVE


def hold_expiry(created_at: datetime, hold_s: int) -> datetime | None:
    """When a new booking's hold lapses unless paid; None: a free course, confirmed at once."""
    return created_at + timedelta(seconds=hold_s) if hold_s else None


def new_status(expires_at: datetime | None) -> Status:
    return "confirmed" if expires_at is None else "held"
