"""A resident's learning record for the city's credit bank, signed (EdDSA).

The record lists the lessons a resident was checked in at (the `attendance` table): one entry
per course and lesson date, worth the lesson's length in hours (`ends_at - starts_at` of the
course; a course meets weekly, every lesson as long as the first). The credit bank gets it as
`{"record": {...}, "jws": "..."}`: `jws` is a compact JWS (alg `EdDSA`, Ed25519, header `kid`)
whose payload is exactly the JSON of `record`, so whoever decodes the payload gets the same
object, and anyone can check it with the public key at `/.well-known/jwks.json`.

The signing key is `BOOKING_RECORD_KEY`: the 32-byte Ed25519 private key (its seed) in
base64url, padding optional (`python -c "import base64, os;
print(base64.urlsafe_b64encode(os.urandom(32)).decode())"` makes one). Unset, the seed is
HMAC-SHA256(BOOKING_SECRET, "booking learning-record key"), so every worker (and every restart)
signs with the same key without a file to share. The `kid` is the key's RFC 7638 thumbprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.api_jws import PyJWS
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from booking.core.auth import Principal, requires
from booking.core.settings import ConfigError, Settings

ISSUER = "booking"
DERIVED_KEY_LABEL = b"booking learning-record key"
_JWS = PyJWS(algorithms=["EdDSA"])

ENTRIES = """
SELECT a.lesson_date, c.id AS course_id, c.title AS course_title, v.id AS venue_id,
       v.name AS venue_name, extract(epoch FROM c.ends_at - c.starts_at) / 3600 AS hours
FROM attendance a
JOIN bookings b ON b.id = a.booking_id
JOIN courses c ON c.id = b.course_id
JOIN venues v ON v.id = c.venue_id
WHERE b.resident_id = $1
GROUP BY a.lesson_date, c.id, v.id
ORDER BY a.lesson_date, c.id
"""


class Entry(msgspec.Struct):
    """One lesson attended: its Beijing date (YYYY-MM-DD), course, venue and hours."""

    date: str
    course_id: int
    course_title: str
    venue_id: int
    venue_name: str
    hours: float  # a whole number of hours is sent as one (2, not 2.0)


class Record(msgspec.Struct):
    resident_id: str
    issuer: str
    issued_at: str  # ISO 8601, UTC
    total_hours: float
    entries: list[Entry]


class SignedRecord(msgspec.Struct):
    record: Record
    jws: str  # compact JWS (EdDSA) whose payload is exactly the JSON of `record`


class PublicKey(msgspec.Struct):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class KeySet(msgspec.Struct):
    keys: list[PublicKey]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hours(value: Decimal | float) -> int | float:
    """Hours as a plain number: 2, not 2.0; 1.5; at most two decimals."""
    rounded = round(float(value), 2)
    return int(rounded) if rounded.is_integer() else rounded


def seed_of(settings: Settings) -> bytes:
    """The Ed25519 seed: BOOKING_RECORD_KEY decoded, else derived from BOOKING_SECRET."""
    if not settings.record_key:
        return hmac.new(settings.secret.encode(), DERIVED_KEY_LABEL, hashlib.sha256).digest()
    text = settings.record_key
    try:
        seed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise ConfigError("BOOKING_RECORD_KEY must be a 32-byte Ed25519 seed in base64url "
                          "(43 characters without padding).")
    return seed


class RecordSigner:
    """Signs records with one Ed25519 key and publishes its public half."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        x = _b64url(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        # RFC 7638: SHA-256 of the required members, sorted, no spaces.
        members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"),
                             sort_keys=True)
        self.kid = _b64url(hashlib.sha256(members.encode()).digest())
        self.public = PublicKey(kty="OKP", crv="Ed25519", x=x, kid=self.kid, use="sig",
                                alg="EdDSA")

    @classmethod
    def of(cls, settings: Settings) -> RecordSigner:
        return cls(seed_of(settings))

    def sign(self, payload: bytes) -> str:
        return _JWS.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self.kid})


class Records:
    """The domain's service: a resident's record, read from Postgres and signed."""

    def __init__(self, pool: asyncpg.Pool, signer: RecordSigner) -> None:
        self._pool = pool
        self.signer = signer

    async def of_resident(self, resident_id: str) -> Record:
        rows = await self._pool.fetch(ENTRIES, resident_id)
        entries = [Entry(date=row["lesson_date"].isoformat(), course_id=row["course_id"],
                         course_title=row["course_title"], venue_id=row["venue_id"],
                         venue_name=row["venue_name"], hours=_hours(row["hours"]))
                   for row in rows]
        issued_at = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return Record(resident_id=resident_id, issuer=ISSUER, issued_at=issued_at,
                      total_hours=_hours(sum(entry.hours for entry in entries)),
                      entries=entries)

    async def signed(self, resident_id: str) -> SignedRecord:
        """The record with its JWS; the payload is the record's own JSON, byte for byte."""
        record = await self.of_resident(resident_id)
        return SignedRecord(record=record, jws=self.signer.sign(msgspec.json.encode(record)))

    def key_set(self) -> KeySet:
        return KeySet(keys=[self.signer.public])


# --- HTTP -------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]


@get("/v1/me/record", operation_id="myLearningRecord", tags=["records"],
     **requires("resident"))
async def my_record(request: Caller, records: NamedDependency[Records]
                    ) -> Response[SignedRecord]:
    """Your learning record for the credit bank: hours per lesson you were checked in at, and
    a compact JWS (EdDSA) of it; verify with the key at `/.well-known/jwks.json`."""
    return Response(await records.signed(request.user.sub),
                    headers={"Cache-Control": "no-store"})


@get("/.well-known/jwks.json", operation_id="learningRecordKeys", tags=["records"])
async def jwks(records: NamedDependency[Records]) -> Response[KeySet]:
    """The public key(s) learning records are signed with (a JWK Set)."""
    return Response(records.key_set(), headers={"Cache-Control": "public, max-age=3600"})


HANDLERS: list[Any] = [my_record, jwks]
