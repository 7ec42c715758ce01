"""Bearer tokens and who may call what.

Tokens are HS256 JWTs signed with BOOKING_SECRET, claims `sub`, `role`, `exp`, for a venue
`venue_id`, and for a resident of a priority group (releases) perhaps `tier`. A protected
route declares its roles with `requires(...)`, which gives the route both the roles that
`authentication` checks and its OpenAPI security, so the check and the documentation cannot
drift. The check runs before Litestar reads or validates the body: a stranger learns nothing
about a route's input, and a forged token is never mistaken for an input error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import jwt
import msgspec
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp, Receive, Scope, Send

from booking.core.errors import Forbidden, Unauthorized, documented
from booking.core.fields import NO_NUL

Role = Literal["resident", "venue", "operator"]
ROLES: tuple[Role, ...] = ("resident", "venue", "operator")
TOKEN_DAYS = 30
_CACHE_LIMIT = 50_000


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the verified claims of their token."""

    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL)]
    role: Role
    exp: float
    venue_id: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # A priority group (e.g. "senior"): earlier openings in releases that name it.
    tier: Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=NO_NUL)] | None = None


def mint(secret: str, role: str, sub: str, *, venue_id: int | None = None,
         days: float = TOKEN_DAYS, tier: str | None = None) -> str:
    """A signed token; `booking token` prints these."""
    claims: dict[str, object] = {"sub": sub, "role": role, "exp": int(time.time() + days * 86400)}
    if venue_id is not None:
        claims["venue_id"] = venue_id
    if tier is not None:
        claims["tier"] = tier
    return jwt.encode(claims, secret, algorithm="HS256")


def _invalid(detail: str = "The token is not valid.") -> Unauthorized:
    return Unauthorized(detail)


class _PlainClaims(Principal, frozen=True, forbid_unknown_fields=True):
    """A token's claims that are exactly Principal's and nothing else (no `iat`, `nbf`,
    `aud`, ...: PyJWT gives those meaning, so their tokens go to PyJWT)."""


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_HEADERS_KEPT = 16  # header segments learnt from PyJWT (one per way of minting, in practice)


class TokenVerifier:
    """Verifies tokens; remembers verified ones so a hot path pays for HMAC once per token."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._verified: dict[str, Principal] = {}
        self._headers: set[str] = set()  # header segments PyJWT accepted with this key

    def principal(self, authorization: str | None) -> Principal:
        """The caller named by an `Authorization` header, or Unauthorized."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized()
        found = self._verified.get(token)
        if found is None:
            found = self.verify(token)
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = found
        if found.exp < time.time():
            raise _invalid("The token has expired.")
        return found

    def verify(self, token: str) -> Principal:
        """The token's principal, or Unauthorized. PyJWT judges every token (`checked`), except
        the plain ones (`_plain`) of a header it has already accepted with this key.

        On release night most tokens are new to a worker (in `booking bench` a resident asks
        each worker 2.4 times), and PyJWT spent 51 us on each, a sixth of a sold-out answer's
        CPU; the plain path takes 7 us. It accepts only what PyJWT would, and anything else is
        left to PyJWT (tests/test_auth.py compares the two on mutated tokens)."""
        plain = self._plain(token)
        if plain is not None:
            return plain
        principal = self.checked(token)
        if len(self._headers) < _HEADERS_KEPT:
            self._headers.add(token.partition(".")[0])
        return principal

    def _plain(self, token: str) -> Principal | None:
        """The principal of a token whose header segment PyJWT accepted before (so HS256),
        signed with this key (HMAC-SHA256, compared in constant time), whose claims are
        exactly Principal's, valid and not expired. None: anything else."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] not in self._headers:
            return None
        header, payload, signature = parts
        if not _SEGMENT.fullmatch(payload) or not _SEGMENT.fullmatch(signature):
            return None
        mac = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        # Segments compared as text in their one canonical form: base64 decoding ignores the
        # spare bits of a last character, which PyJWT refuses ("Invalid crypto padding").
        if not hmac.compare_digest(_base64(mac), signature):
            return None
        try:
            raw = _unbase64(payload)
            if _base64(raw) != payload:
                return None
            claims = msgspec.json.decode(raw, type=_PlainClaims)
        except (binascii.Error, msgspec.DecodeError):
            return None
        if int(claims.exp) <= time.time() or (claims.role == "venue" and claims.venue_id is None):
            return None
        return Principal(claims.sub, claims.role, claims.exp, claims.venue_id, claims.tier)

    def checked(self, token: str) -> Principal:
        """Check an HS256 JWT with PyJWT (only HS256: no `none`, no key confusion; `exp`,
        `sub` and `role` required), then its claims by type."""
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"],
                                options={"require": ["exp", "sub", "role"]})
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("The token has expired.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"The token lacks its {exc.claim!r} claim.") from exc
        except jwt.InvalidTokenError as exc:
            raise _invalid() from exc
        try:
            principal = msgspec.convert(claims, Principal)
        except msgspec.ValidationError as exc:
            raise _invalid(f"The token's claims are not valid: {exc}.") from exc
        if principal.role == "venue" and principal.venue_id is None:
            raise _invalid("A venue token needs a venue_id claim.")
        return principal


def _base64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unbase64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def authentication(verifier: TokenVerifier) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware: on a route that `requires` roles, the caller's token and role are
    checked before anything else (Litestar runs route middleware before it reads the body or
    resolves a dependency); the principal goes to `scope["user"]` (`request.user`).

    A plain middleware rather than a guard: Litestar copies the route handler for every guard
    call, which cost a sold-out grab 220 us, almost as much as the rest of its answer."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def authenticate(scope: Scope, receive: Receive, send: Send) -> None:
            roles = scope["route_handler"].opt.get("roles") if scope["type"] == "http" else None
            if roles:
                principal = verifier.principal(_header(scope, b"authorization"))
                if principal.role not in roles:
                    raise Forbidden(f"This needs a {' or '.join(roles)} token.")
                scope["user"] = principal
            await app(scope, receive, send)

        return authenticate

    return middleware


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def requires(*roles: Role, errors: tuple[int, ...] = (),
             also: dict[int, ResponseSpec] | None = None) -> dict[str, Any]:
    """Route options of an operation that needs a token of one of `roles`: the roles the
    authentication middleware checks, its OpenAPI security and its answers (the errors, and
    `also` any other success), from one place."""
    return {"security": [{"bearer": []}],
            "responses": {**documented(400, 401, 403, *errors, 503), **(also or {})},
            "opt": {"roles": roles}}


def check_owner(principal: Principal, venue_id: int) -> None:
    """A venue may act only on its own courses (operators on every one)."""
    if principal.role == "venue" and principal.venue_id != venue_id:
        raise Forbidden("This course belongs to another venue.")
