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
from booking.ledger.locks import lock_courses
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
STILL_ACTIVE = """
SELECT id::text AS id, course_id, resident_id FROM bookings
WHERE id = ANY($1::uuid[]) AND booking_active(status)
"""


async def expire_due_holds(pool: asyncpg.Pool, gate: SeatGate, limit: int = 500) -> int:
    """Expire the holds whose time is up; returns how many."""
    due = await pool.fetch(DUE_HOLDS, limit)
    if not due:
        return 0
    for row in due:
        await gate.mark_leaving(row["course_id"], row["resident_id"], row["id"])
    async with pool.acquire() as conn, conn.transaction():
        await lock_courses(conn, (row["course_id"] for row in due))  # see ledger/locks.py
        expired = await conn.fetch(EXPIRE_HOLDS, [row["id"] for row in due])
        still_held = await conn.fetch(STILL_ACTIVE, [row["id"] for row in due])
    for row in expired:
        await free_seat(pool, gate, row["course_id"], row["resident_id"], row["id"])
    # Paid meanwhile: their seats stay, so clear the leaving marks. A hold that ended another
    # way (the resident's own cancel) keeps its mark for that cancel to finish.
    await gate.settle((row["course_id"], row["resident_id"], row["id"]) for row in still_held)
    HOLDS_EXPIRED.inc(len(expired))
    return len(expired)
