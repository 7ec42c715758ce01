"""Bearer tokens: HS256 JWTs signed with BOOKING_SECRET, claims `sub`, `role` and `venue_id`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Annotated, Literal

import jwt
import msgspec
from litestar import Request

from booking.core.errors import ApiError
from booking.core.fields import NO_NUL

Role = Literal["resident", "venue", "operator"]
ROLES: tuple[str, ...] = ("resident", "venue", "operator")
TOKEN_DAYS = 30
_CACHE_LIMIT = 50_000


class Principal(msgspec.Struct, frozen=True):
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL)]
    role: Role
    venue_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    exp: float | None = None


def mint(secret: str, role: str, sub: str, *, venue_id: int | None = None,
         days: float = TOKEN_DAYS) -> str:
    """A signed token; `booking token` prints these."""
    claims: dict[str, object] = {"sub": sub, "role": role, "exp": int(time.time() + days * 86400)}
    if venue_id is not None:
        claims["venue_id"] = venue_id
    return jwt.encode(claims, secret, algorithm="HS256")


class _Header(msgspec.Struct):
    alg: str


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _invalid() -> ApiError:
    return ApiError(401, "unauthorized", "The token is not valid.")


class Authenticator:
    """Verifies tokens; remembers verified ones so a hot path pays for HMAC once per token."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._verified: dict[str, Principal] = {}

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "Send a token as 'Authorization: Bearer <token>'.")
        found = self._verified.get(token)
        if found is None:
            found = self._verify(token)
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = found
        if found.exp is not None and found.exp < time.time():
            raise ApiError(401, "unauthorized", "The token has expired.")
        return found

    def _verify(self, token: str) -> Principal:
        """Check an HS256 JWT: only HS256 is accepted (no `none`, no key confusion), the
        signature in constant time, then the claims by type. Hand-written because a rush brings
        a new token with almost every request, and this is several times cheaper than PyJWT."""
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
            header = msgspec.json.decode(_b64decode(header_b64), type=_Header)
            signature = _b64decode(signature_b64)
        except (ValueError, msgspec.DecodeError, binascii.Error) as exc:
            raise _invalid() from exc
        signed = f"{header_b64}.{payload_b64}".encode()
        expected = hmac.new(self._key, signed, hashlib.sha256).digest()
        if header.alg != "HS256" or not hmac.compare_digest(expected, signature):
            raise _invalid()
        try:
            principal = msgspec.json.decode(_b64decode(payload_b64), type=Principal)
        except msgspec.ValidationError as exc:
            detail = f"The token's claims are not valid: {exc}."
            raise ApiError(401, "unauthorized", detail) from exc
        except (msgspec.DecodeError, binascii.Error) as exc:
            raise _invalid() from exc
        if principal.exp is not None and principal.exp < time.time():
            raise ApiError(401, "unauthorized", "The token has expired.")
        if principal.role == "venue" and principal.venue_id is None:
            raise ApiError(401, "unauthorized", "A venue token needs a venue_id claim.")
        return principal

    def require(self, request: Request, *roles: Role) -> Principal:
        principal = self.principal(request)
        if principal.role not in roles:
            raise ApiError(403, "forbidden", f"This needs a {' or '.join(roles)} token.")
        return principal
