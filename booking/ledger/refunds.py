"""Money owed back when a paid booking ends without its lesson.

A booking is paid when a payment callback confirmed it (its `payments` row says `confirmed`).
Every path that ends such a booking (its course cancelled by the venue or an operator, the
resident's own cancel or a swap away from it, all before the lesson) calls `owe_refunds` in the
transaction that ends it: the payment's outcome becomes `refund_due`, so the refund exists if
and only if the booking's end committed, it is listed by `GET /v1/payments/refunds` and counted
by `booking check`, and the resident is told through the outbox.

The refund is the payment's own outcome, not a row of a table of its own: the refund list, the
checker and a late callback's refund already read `outcome`, and a payment is owed back at most
once. The price: a provider repeating the callback that confirmed the booking is now answered
`refund_due`, which is what is true by then.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import asyncpg

from booking.ledger.outbox import add_notification

Reason = Literal["course_cancelled", "cancelled", "swapped"]

# Only bookings that have ended (in this transaction): an active one keeps its payment.
OWE_REFUNDS = """
UPDATE payments p SET outcome = 'refund_due'
FROM bookings b
WHERE b.id = ANY($1::uuid[]) AND p.booking_id = b.id AND p.outcome = 'confirmed'
  AND NOT booking_active(b.status)
RETURNING p.provider_ref, p.booking_id::text AS booking_id, p.amount_cents, b.course_id,
          b.resident_id
"""


async def owe_refunds(conn: asyncpg.Connection, booking_ids: Collection[str],
                      reason: Reason) -> int:
    """Record the refund of every paid booking among `booking_ids` (ended in the caller's
    transaction) and tell each resident; returns how many refunds are owed. Callers pass only
    bookings whose `paid_at` is set, so an unpaid cancel never reads payments."""
    if not booking_ids:
        return 0
    rows = await conn.fetch(OWE_REFUNDS, list(booking_ids))
    for row in rows:
        await add_notification(conn, "refund_due", row["resident_id"], {
            "course_id": row["course_id"], "booking_id": row["booking_id"],
            "provider_ref": row["provider_ref"], "amount_cents": row["amount_cents"],
            "reason": reason})
    return len(rows)
