"""What a booking's status means, in one place for Python (schema.sql has the SQL twin).

A booking is *active* while it holds a seat: `confirmed`, or `held` (a paid course's seat
waiting for its payment). A grab of a paid course makes a hold lasting the course's
`hold_minutes`; Postgres writes its status and `expires_at` (now() + the hold, by Postgres's
clock, the one expiry and payment compare with), so Python never computes either.
"""

from __future__ import annotations

from typing import Literal

Status = Literal["confirmed", "held", "cancelled", "expired"]
ACTIVE: tuple[Status, ...] = ("confirmed", "held")


def is_active(status: str) -> bool:
    return status in ACTIVE
