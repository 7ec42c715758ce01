"""Payment callbacks are signed with HMAC-SHA256 of the raw body (BOOKING_PAYMENT_SECRET).

The service checks the signature; `booking pay`, the load tests and the tests make one. Both
sides live here so that they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Booking-Signature"


def sign(secret: str, body: bytes) -> str:
    """The header value a provider sends with `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body`, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256=").strip().lower())


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    """The headers of a signed JSON callback."""
    return {SIGNATURE_HEADER: sign(secret, body), "Content-Type": "application/json"}
