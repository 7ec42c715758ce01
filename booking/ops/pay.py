"""`booking pay`: play the payment provider, sending a signed callback that pays a hold."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import uuid

from booking.core.settings import ConfigError, Settings
from booking.core.stores import connected, running

PRICE_OF = """
SELECT c.price_cents FROM bookings b JOIN courses c ON c.id = b.course_id WHERE b.id = $1
"""


def run(args: argparse.Namespace) -> int:
    import httpx
    import msgspec

    from booking.core.signing import signed_headers

    try:
        booking_id = str(uuid.UUID(args.booking_id))
    except ValueError as exc:
        raise ConfigError(f"{args.booking_id!r} is not a booking id.") from exc
    settings = Settings.from_env()
    amount = args.amount
    if amount is None:
        with running(settings, quiet=True) as ready:
            amount = asyncio.run(price_of(ready, booking_id))
    body = msgspec.json.encode({"provider_ref": args.ref or f"demo-{secrets.token_hex(8)}",
                                "booking_id": booking_id, "amount_cents": amount,
                                "status": "paid"})
    try:
        answer = httpx.post(f"{args.url}/v1/payments/callback", content=body, timeout=10,
                            headers=signed_headers(settings.payment_secret, body))
    except httpx.HTTPError as exc:
        raise ConfigError(f"the service at {args.url} did not answer: {exc}.") from exc
    print(f"{answer.status_code} {answer.text}")
    return 0 if answer.status_code == 200 else 1


async def price_of(settings: Settings, booking_id: str) -> int:
    """The price of the booking's course, in cents, from Postgres."""
    async with connected(settings) as stores:
        price = await stores.pool.fetchval(PRICE_OF, booking_id)
    if price is None:
        raise ConfigError(f"no booking {booking_id}.")
    return price
