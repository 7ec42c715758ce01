"""Freed seats go to the waitlist first.

The gate decides who gets a freed seat (free.lua pops the first resident waiting in the same
step that frees the seat); this module writes that decision down: the booking (confirmed, or a
hold with its own expiry on a paid course), the waitlist row marked `promoted`, and an outbox
notification, in one transaction per promotion. A promotion Postgres cannot take is undone in
the gate, or passed on to the next resident when that waiter had already left (or holds as
many seats as the term's cap allows: then they leave this waitlist).
"""

from __future__ import annotations

import logging

import asyncpg

from booking.core.observability import PROMOTIONS
from booking.ledger.locks import lock_courses
from booking.ledger.outbox import add_notification
from booking.ledger.term_cap import CONSTRAINT as TERM_CAP
from booking.seats import Promotion, SeatGate
from booking.seats.quota import quota_key

log = logging.getLogger("booking.ledger.promotions")

PROMOTE = """
WITH place AS (
    UPDATE waitlist w SET status = 'promoted', booking_id = $1, updated_at = now()
    FROM courses c
    WHERE w.id = $4 AND w.course_id = $2 AND w.resident_id = $3 AND w.status = 'waiting'
      AND c.id = w.course_id AND c.status = 'published'
    RETURNING c.id, course_hold_s(c.price_cents, c.hold_minutes) AS hold_s)
INSERT INTO bookings (id, course_id, resident_id, status, expires_at)
SELECT $1, id, $3, new_booking_status(hold_s), new_booking_expiry(hold_s)
FROM place
RETURNING id::text, course_id, resident_id, status, expires_at
"""
GIVE_UP_PLACE = """
UPDATE waitlist SET status = 'cleared', updated_at = now() WHERE id = $1 AND status = 'waiting'
"""
PROMOTION_BATCH = 50
# Errors after which the outcome of the statement in flight is unknown (it may have committed):
# the connection broke under it (asyncpg reports some of those as PostgresConnectionError, a
# PostgresError, so this is checked first).
CONNECTION_LOST = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                   asyncpg.PostgresConnectionError, TimeoutError)


async def free_seat(pool: asyncpg.Pool, gate: SeatGate, course_id: int, resident_id: str,
                    booking_id: str) -> bool:
    """Free a booking's seat; the first resident waiting gets it. False when that booking held
    no seat in the gate (already freed, or the gate lost the course)."""
    freed, promoted = await gate.free(course_id, resident_id, booking_id, promotions=1)
    if freed:  # the seat no longer counts toward the resident's term cap (if it did)
        await gate.redis.hdel(quota_key(resident_id), str(course_id))
    await write_promotions(pool, gate, promoted)
    return freed


async def promote_waiting(pool: asyncpg.Pool, gate: SeatGate, course_id: int) -> int:
    """Hand every free seat of a course to the residents waiting (after a capacity increase, a
    seat the reconciler gave back, or an earlier promotion that failed). Returns how many."""
    total = 0
    while True:
        _, promoted = await gate.free(course_id, promotions=PROMOTION_BATCH)
        total += await write_promotions(pool, gate, promoted)
        if len(promoted) < PROMOTION_BATCH:
            return total


async def write_promotions(pool: asyncpg.Pool, gate: SeatGate,
                           promotions: list[Promotion]) -> int:
    """Write each promotion; returns how many bookings were written."""
    written = 0
    todo = list(promotions)
    while todo:
        promotion = todo.pop(0)
        try:
            outcome = await _write_one(pool, promotion)
        except CONNECTION_LOST as exc:
            # Unknown whether it committed: the pending mark lets the reconciler judge.
            log.warning("promotion on course %s left to the reconciler: %s",
                        promotion.course_id, type(exc).__name__)
            continue
        except asyncpg.PostgresError as exc:
            log.warning("promotion on course %s not written: %s", promotion.course_id, exc)
            await gate.unpromote(promotion)
            continue
        if outcome == "written":
            written += 1
            PROMOTIONS.inc()
            await gate.settle([(promotion.course_id, promotion.resident_id, promotion.booking_id)])
        else:  # that resident no longer waits: the seat goes on to the next one
            _, more = await gate.free(promotion.course_id, promotion.resident_id,
                                      promotion.booking_id, promotions=1)
            todo += more
    return written


async def _write_one(pool: asyncpg.Pool, promotion: Promotion) -> str:
    async with pool.acquire() as conn, conn.transaction():
        await lock_courses(conn, [promotion.course_id])  # before the place: see ledger/locks.py
        try:
            async with conn.transaction():  # a savepoint: a refused row ends only itself
                row = await conn.fetchrow(PROMOTE, promotion.booking_id, promotion.course_id,
                                          promotion.resident_id, promotion.waitlist_id)
        except asyncpg.UniqueViolationError:  # they hold a booking of this course already
            await conn.execute(GIVE_UP_PLACE, promotion.waitlist_id)
            return "void"
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name != TERM_CAP:
                raise
            # At the term's cap: they leave this waitlist, the seat goes on to the next.
            await conn.execute(GIVE_UP_PLACE, promotion.waitlist_id)
            return "void"
        if row is None:
            return "void"
        payload = {"booking_id": row["id"], "course_id": row["course_id"],
                   "status": row["status"],
                   "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None}
        await add_notification(conn, "promoted", promotion.resident_id, payload)
    return "written"
