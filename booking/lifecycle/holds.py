"""Holds of paid courses lapse on time: the sweeper expires them and frees their seats, to the
waitlist first.

Payment and expiry race for the same row; both are an UPDATE of a `held` booking, one requiring
`expires_at` in the future and the other in the past, so Postgres's row lock lets exactly one of
them win. The seat is marked leaving in the gate before the row changes, so a sweeper killed
between the UPDATE and the free leaves a pending mark the reconciler finishes.
"""

from __future__ import annotations

import asyncpg

from booking.core.observability import HOLDS_EXPIRED
from booking.ledger.promotions import free_seat
from booking.seats import SeatGate

DUE_HOLDS = """
SELECT id::text AS id, course_id, resident_id FROM bookings
WHERE status = 'held' AND expires_at <= now() ORDER BY expires_at LIMIT $1
"""
EXPIRE_HOLDS = """
UPDATE bookings SET status = 'expired', cancelled_at = now()
WHERE id = ANY($1::uuid[]) AND status = 'held' AND expires_at <= now()
RETURNING id::text AS id, course_id, resident_id
"""


async def expire_due_holds(pool: asyncpg.Pool, gate: SeatGate, limit: int = 500) -> int:
    """Expire the holds whose time is up; returns how many."""
    due = await pool.fetch(DUE_HOLDS, limit)
    if not due:
        return 0
    for row in due:
        await gate.mark_leaving(row["course_id"], row["resident_id"], row["id"])
    expired = await pool.fetch(EXPIRE_HOLDS, [row["id"] for row in due])
    for row in expired:
        await free_seat(pool, gate, row["course_id"], row["resident_id"], row["id"])
    gone = {row["id"] for row in expired}
    paid_meanwhile = [(row["course_id"], row["resident_id"])
                      for row in due if row["id"] not in gone]
    await gate.settle(paid_meanwhile)  # their seats stay; clear the leaving marks
    HOLDS_EXPIRED.inc(len(expired))
    return len(expired)
