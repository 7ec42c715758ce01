"""Payment callbacks from the provider: a paid hold becomes a confirmed booking.

The provider signs the raw body with HMAC-SHA256 (BOOKING_PAYMENT_SECRET) and sends
`X-Booking-Signature: sha256=<hex>`; nothing is read from an unsigned body. The provider
reference is the idempotency key: its `payments` row is written first, so a repeated callback
(even a concurrent twin, which waits on that row) finds it and gets the same answer. A payment
that arrives after the hold lapsed, for a cancelled booking, or twice for one booking does not
resurrect or double anything: it is recorded as `refund_due` and listed for operators. So is a
confirmed payment whose booking ends without its lesson (the course cancelled, the resident's
cancel or swap): booking/ledger/refunds.py owes it in the transaction that ends the booking,
and a repeat of the callback that confirmed it is then answered `refund_due`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency

from booking.core.auth import requires
from booking.core.errors import (
    ApiError,
    Conflict,
    Invalid,
    NotFound,
    Unauthorized,
    answer,
    documented,
)
from booking.core.fields import NO_NUL
from booking.core.observability import PAYMENTS
from booking.core.signing import SIGNATURE_HEADER, signature_ok


class PaymentCallback(msgspec.Struct):
    provider_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
    booking_id: uuid.UUID
    amount_cents: Annotated[int, msgspec.Meta(ge=0, le=10**12)]
    status: Literal["paid"]


class PaymentOut(msgspec.Struct):
    provider_ref: str
    booking_id: str
    outcome: str  # confirmed, refund_due (or amount_mismatch, answered 409)
    booking_status: str


class RefundDue(msgspec.Struct):
    provider_ref: str
    booking_id: str
    amount_cents: int
    received_at: datetime


CLAIM_REFERENCE = """
INSERT INTO payments (provider_ref, booking_id, amount_cents, outcome)
VALUES ($1, $2, $3, 'refund_due') ON CONFLICT (provider_ref) DO NOTHING RETURNING provider_ref
"""
EARLIER_CALLBACK = """
SELECT p.provider_ref, p.booking_id::text AS booking_id, p.outcome, b.status AS booking_status
FROM payments p JOIN bookings b ON b.id = p.booking_id WHERE p.provider_ref = $1
"""
BOOKING_TO_PAY = """
SELECT b.status, b.expires_at > now() AS in_time, c.price_cents
FROM bookings b JOIN courses c ON c.id = b.course_id WHERE b.id = $1 FOR UPDATE OF b
"""
CONFIRM_HOLD = """
UPDATE bookings SET status = 'confirmed', paid_at = now()
WHERE id = $1 AND status = 'held' AND expires_at > now() RETURNING status
"""
SET_OUTCOME = "UPDATE payments SET outcome = $2 WHERE provider_ref = $1"
REFUNDS_DUE = """
SELECT provider_ref, booking_id::text AS booking_id, amount_cents, received_at FROM payments
WHERE outcome = 'refund_due' ORDER BY received_at LIMIT 1000
"""

BAD_SIGNATURE = Unauthorized("The callback signature is missing or wrong.", code="bad_signature")
AMOUNT_MISMATCH = Conflict("The amount paid is not the price of this course.",
                           code="amount_mismatch")
REF_REUSED = Conflict("This provider reference was used for another booking.",
                      code="provider_ref_reused")


class Payments:
    """The payments domain's service: settle a signed callback, list refunds due."""

    def __init__(self, pool: asyncpg.Pool, secret: str) -> None:
        self.pool = pool
        self._secret = secret

    async def settle(self, body: bytes, signature: str | None) -> PaymentOut | ApiError:
        """The answer to a callback: nothing is read from a body that is not signed."""
        if not signature_ok(self._secret, body, signature):
            raise BAD_SIGNATURE.again()
        try:
            callback = msgspec.json.decode(body, type=PaymentCallback)
        except msgspec.DecodeError as exc:
            raise Invalid(f"Invalid payment callback: {exc}") from exc
        async with self.pool.acquire() as conn, conn.transaction():
            result, repeated = await _settle_payment(conn, callback)
        PAYMENTS.labels("repeated" if repeated else result.outcome).inc()
        return AMOUNT_MISMATCH if result.outcome == "amount_mismatch" else result

    async def refunds_due(self) -> list[RefundDue]:
        return [RefundDue(**dict(row)) for row in await self.pool.fetch(REFUNDS_DUE)]


async def _settle_payment(conn: asyncpg.Connection,
                          callback: PaymentCallback) -> tuple[PaymentOut, bool]:
    """The answer, and whether this provider reference was seen before."""
    try:
        claimed = await conn.fetchval(CLAIM_REFERENCE, callback.provider_ref,
                                      callback.booking_id, callback.amount_cents)
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFound.of("booking") from exc
    if claimed is None:  # seen before: the answer it got then
        earlier = await conn.fetchrow(EARLIER_CALLBACK, callback.provider_ref)
        if earlier["booking_id"] != str(callback.booking_id):
            raise REF_REUSED.again()
        return PaymentOut(**dict(earlier)), True
    booking = await conn.fetchrow(BOOKING_TO_PAY, callback.booking_id)
    if callback.amount_cents != booking["price_cents"]:
        outcome, status = "amount_mismatch", booking["status"]
    elif booking["status"] == "held" and booking["in_time"]:
        outcome, status = "confirmed", await conn.fetchval(CONFIRM_HOLD, callback.booking_id)
    else:  # lapsed, cancelled, or paid already: never resurrected, the money goes back
        outcome, status = "refund_due", booking["status"]
    await conn.execute(SET_OUTCOME, callback.provider_ref, outcome)
    return PaymentOut(callback.provider_ref, str(callback.booking_id), outcome, status), False


# --- /v1 --------------------------------------------------------------------------------------

@post("/v1/payments/callback", operation_id="paymentCallback", tags=["payments"],
      status_code=200, responses=documented(400, 401, 404, 409, 413, 503))
async def payment_callback(request: Request,
                           payments: NamedDependency[Payments]) -> Response[PaymentOut]:
    """The payment provider reports a paid hold (JSON body signed with HMAC-SHA256 in the
    X-Booking-Signature header: `sha256=<hex>`). Same callback twice: same answer."""
    result = await payments.settle(await request.body(), request.headers.get(SIGNATURE_HEADER))
    if isinstance(result, ApiError):
        return answer(result)
    return Response(result, status_code=200)


@get("/v1/payments/refunds", operation_id="refundsDue", tags=["payments"],
     **requires("operator"))
async def refunds_due(payments: NamedDependency[Payments]) -> list[RefundDue]:
    """Payments to give back: they came for a hold that had lapsed or was no longer active, or
    paid a booking that ended without its lesson (operators)."""
    return await payments.refunds_due()


HANDLERS: list[Any] = [payment_callback, refunds_due]
