"""Check-in tokens: what a booking's QR code and 8-character code hold.

A resident shows the QR at the door; a venue's desk (next issue) reads it and must trust it
without a database round trip to tell a forged code from a real one. So the token carries the
booking id and a MAC of it:

    token = base64url(booking id (16 bytes) + HMAC-SHA256(token key, booking id)[:12])

38 characters, which fits a QR of version 3 at error level M (a small, easily read code on a
cheap phone screen). The MAC keeps 96 bits: guessing one for a booking id takes 2^96 tries. The
8-character code (for when a camera fails) is 40 bits of another MAC in Crockford's base32
(no I, L, O or U to misread); it names no booking by itself, so a desk compares it with the
codes of the course's roster. Both keys are derived from BOOKING_SECRET, each for its one use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from functools import cache
from html import escape

import segno

MAC_BYTES = 12  # 96 bits
CODE_CHARS = 8  # 40 bits, 5 bits a character
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# What a person may type for a character of the code: Crockford's own reading rules.
TYPED = str.maketrans({"O": "0", "I": "1", "L": "1"})
QR_ERROR = "m"  # 15 % of the code may be lost (a scratched screen, glare) and still read


@cache
def _keys(secret: str) -> tuple[bytes, bytes]:
    """(token key, code key), each derived from the service secret for its one purpose."""
    master = secret.encode()
    return (hmac.new(master, b"checkin", hashlib.sha256).digest(),
            hmac.new(master, b"checkin-code", hashlib.sha256).digest())


def _id_bytes(booking_id: str | uuid.UUID) -> bytes:
    return (booking_id if isinstance(booking_id, uuid.UUID) else uuid.UUID(booking_id)).bytes


def checkin_token(secret: str, booking_id: str | uuid.UUID) -> str:
    """The token a booking's QR code holds (38 base64url characters)."""
    raw = _id_bytes(booking_id)
    mac = hmac.new(_keys(secret)[0], raw, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(raw + mac).rstrip(b"=").decode()


def booking_of_token(secret: str, token: str) -> str | None:
    """The booking id a token names, or None for anything not made by `checkin_token` with
    this secret (malformed, truncated or tampered)."""
    if not isinstance(token, str) or len(token) > 64:
        return None
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(decoded) != 16 + MAC_BYTES:
        return None
    raw, mac = decoded[:16], decoded[16:]
    expected = hmac.new(_keys(secret)[0], raw, hashlib.sha256).digest()[:MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    booking_id = uuid.UUID(bytes=raw)
    # Only the canonical spelling: one booking, one token (base64 has spare padding bits).
    return str(booking_id) if checkin_token(secret, booking_id) == token else None


def checkin_code(secret: str, booking_id: str | uuid.UUID) -> str:
    """The booking's 8-character code, e.g. `7KQ2MXHD`."""
    mac = hmac.new(_keys(secret)[1], _id_bytes(booking_id), hashlib.sha256).digest()
    bits = int.from_bytes(mac[:5], "big")
    return "".join(CROCKFORD[(bits >> shift) & 31] for shift in range(35, -1, -5))


def code_matches(secret: str, booking_id: str | uuid.UUID, typed: str) -> bool:
    """Whether a code a person typed is this booking's (case, spaces, dashes and the
    look-alikes O/0, I/L/1 forgiven)."""
    cleaned = typed.upper().replace(" ", "").replace("-", "").translate(TYPED)
    return hmac.compare_digest(cleaned.encode(), checkin_code(secret, booking_id).encode())


def checkin_qr(token: str) -> segno.QRCode:
    """The QR code of a token: a regular (never micro) code at level M."""
    return segno.make(token, error=QR_ERROR, micro=False, boost_error=False)


def qr_svg(token: str, label: str) -> str:
    """The QR code of a token as inline SVG of class `qr` (the stylesheet sizes it), with
    `label` as its accessible name."""
    svg = checkin_qr(token).svg_inline(scale=1, border=4, svgclass="qr", lineclass=None,
                                       omitsize=True, dark="#000", light="#fff")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(label)}" '
                                'shape-rendering="crispEdges" ', 1)
