"""Signing in with a phone: one-time codes, residents, tokens.

A resident asks for a code (`POST /v1/auth/codes`), gets six digits by SMS (or, with
`BOOKING_LOGIN_CODES=log`, in the service log) and trades them for the same HS256 token the API
takes as Bearer (`POST /v1/auth/tokens`); the `/login` pages call the same `SignIn` service.

Everything about a code is decided by Postgres, in one transaction per request, so concurrent
requests (on any worker or host) cannot both win:
- one code per phone per 60 s: the phone's `login_codes` row is replaced only when its last
  code is older than that (an upsert whose WHERE a concurrent twin, waiting on the row, fails);
- at most `ADDRESS_LIMIT` codes per client address per window: a counter row per address (an
  HMAC of it, not the address), counted after the phone's rule so that repeats for one phone
  cost the address nothing; over the limit, the whole transaction (the new code too) rolls back;
- a code is stored as HMAC-SHA256 of phone and code under a key derived from BOOKING_SECRET,
  lives 10 minutes and allows 5 tries; the right one is spent at once.

Venue staff sign in the same way with `role: venue`: the right code for a phone an operator
linked to a venue (`booking.staff`) gives a venue token carrying `venue_id`, whose `sub` is
`staff:` and an HMAC of the phone (the same for every sign-in of that phone, never the phone
itself; check-ins name it as their verifier). A phone linked to no venue gets 403 `not_staff`,
and its code stays good for a resident sign-in. Unlinking a phone stops its next sign-in, not
the tokens it already holds (they last 30 days).

A phone's resident is created at its first sign-in. Its id, chosen when the first code is sent
(`login_codes.resident_id`), is random (`r_...`), never the phone; the outbox row of a code
names it, so the SMS gateway sees who a message is for before that resident exists.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from booking.core.auth import TOKEN_DAYS, mint
from booking.core.errors import ApiError, ErrorBody, Forbidden, Invalid, RateLimited, documented
from booking.core.settings import Settings
from booking.ledger.outbox import add_notification

log = logging.getLogger(__name__)

MOBILE = re.compile(r"1[3-9]\d{9}")  # an 11-digit mainland mobile number
CODE_DIGITS = re.compile(r"\d{6}")
CODE_LIFETIME_S = 600
CODE_TRIES = 5
RESEND_AFTER_S = 60
ADDRESS_LIMIT = (20, 600.0)  # codes per client address, per seconds
TOKEN_LIFETIME_S = TOKEN_DAYS * 86400
ROLES = ("resident", "venue")
KIND = "login_code"  # the outbox kind of a code on its way to the SMS gateway

SEND_CODE = """
INSERT INTO login_codes AS c (phone, resident_id, code_hash, sent_at, expires_at, tries_left)
VALUES ($1, coalesce((SELECT id FROM residents WHERE phone = $1), $2), $3, now(),
        now() + make_interval(secs => $4), $5)
ON CONFLICT (phone) DO UPDATE
SET resident_id = coalesce((SELECT id FROM residents WHERE phone = EXCLUDED.phone),
                           c.resident_id),
    code_hash = EXCLUDED.code_hash, sent_at = EXCLUDED.sent_at,
    expires_at = EXCLUDED.expires_at, tries_left = EXCLUDED.tries_left
WHERE c.sent_at <= now() - make_interval(secs => $6)
RETURNING resident_id, expires_at
"""
RESEND_WAIT_S = """
SELECT extract(epoch FROM sent_at + make_interval(secs => $2) - now())::float8
FROM login_codes WHERE phone = $1
"""
# Both CASEs read the row as it was: a window that ended starts again at this code.
COUNT_ADDRESS = """
INSERT INTO login_code_senders AS s (address_hash, window_start, codes) VALUES ($1, now(), 1)
ON CONFLICT (address_hash) DO UPDATE
SET window_start = CASE WHEN s.window_start <= now() - make_interval(secs => $2)
                        THEN now() ELSE s.window_start END,
    codes = CASE WHEN s.window_start <= now() - make_interval(secs => $2)
                 THEN 1 ELSE s.codes + 1 END
RETURNING codes, extract(epoch FROM window_start + make_interval(secs => $2) - now())::float8
    AS wait_s
"""
# Housekeeping with each code sent; SKIP LOCKED: it never waits for another request's rows.
PRUNE_SENDERS = """
DELETE FROM login_code_senders WHERE address_hash IN (
    SELECT address_hash FROM login_code_senders
    WHERE window_start < now() - make_interval(secs => $1)
    LIMIT 100 FOR UPDATE SKIP LOCKED)
"""
PRUNE_CODES = """
DELETE FROM login_codes WHERE phone IN (
    SELECT phone FROM login_codes WHERE sent_at < now() - interval '1 day'
    LIMIT 100 FOR UPDATE SKIP LOCKED)
"""
CODE_TO_CHECK = """
SELECT resident_id, code_hash, tries_left, expires_at > now() AS live,
       extract(epoch FROM sent_at + make_interval(secs => $2) - now())::float8 AS resend_wait_s
FROM login_codes WHERE phone = $1 FOR UPDATE
"""
SPEND_TRY = """
UPDATE login_codes SET tries_left = tries_left - 1 WHERE phone = $1 RETURNING tries_left
"""
# A spent code is never live again ('-infinity', not now(): a twin request waiting on the row
# lock started earlier, and its now() is earlier too). Its row stays, for the 60 s rule.
SPEND_CODE = "UPDATE login_codes SET expires_at = '-infinity' WHERE phone = $1"
ADD_RESIDENT = "INSERT INTO residents (id, phone) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING"
RESIDENT_OF_PHONE = "SELECT id FROM residents WHERE phone = $1"
VENUE_OF_STAFF = "SELECT venue_id FROM venue_staff WHERE phone = $1"


def clean_phone(text: str) -> str:
    """What a person typed, without the spaces and hyphens people put in phone numbers."""
    return re.sub(r"[\s\-]", "", text)


def _waiting(code: str, wait_s: float, detail: str) -> RateLimited:
    """A 429 saying how long to wait, in Retry-After and in the body."""
    wait = max(1, math.ceil(wait_s))
    return RateLimited(detail, code=code, headers={"Retry-After": str(wait)},
                       extra={"retry_after_s": wait})


def invalid_phone() -> Invalid:
    return Invalid("Give an 11-digit mainland mobile number, e.g. 13800000001.",
                   code="invalid_phone")


@dataclass(frozen=True, slots=True)
class CodeSent:
    phone: str  # as stored: spaces and hyphens taken out
    resend_after_s: int
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str
    expires_in_s: int
    resident_id: str | None = None  # a resident's token
    venue_id: int | None = None  # a venue staff member's token


class SignIn:
    """The sign-in domain's service: what `/v1/auth/*` and the `/login` pages call."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, *,
                 address_limit: tuple[int, float] = ADDRESS_LIMIT) -> None:
        self.pool = pool
        self.settings = settings
        self.address_limit = address_limit
        self._code_key = _derived_key(settings.secret, b"login-code")
        self._address_key = _derived_key(settings.secret, b"login-address")
        self._staff_key = _derived_key(settings.secret, b"staff-subject")
        if settings.login_codes == "outbox" and not settings.webhook_url:
            log.warning("sign-in codes go to the outbox, but BOOKING_WEBHOOK_URL is unset: no "
                        "resident will receive one (BOOKING_LOGIN_CODES=log shows them in this "
                        "log instead)")

    def code_hash(self, phone: str, code: str) -> bytes:
        """What `login_codes` keeps of a code: HMAC-SHA256 over phone and code."""
        return hmac.new(self._code_key, f"{phone}:{code}".encode(), hashlib.sha256).digest()

    async def send_code(self, phone: str, address: str) -> CodeSent:
        """Make a new code for `phone` and send it (log or outbox); raises `invalid_phone`,
        `too_soon` (a code went to this phone less than 60 s ago) or `rate_limited` (too many
        codes from this address)."""
        phone = clean_phone(phone)
        if not MOBILE.fullmatch(phone):
            raise invalid_phone()
        code = f"{secrets.randbelow(10**6):06d}"
        async with self.pool.acquire() as conn, conn.transaction():
            resident_id, expires_at = await self._replace_code(conn, phone, code)
            await self._count_address(conn, address)
            if self.settings.login_codes != "log":
                await add_notification(conn, KIND, resident_id, {
                    "phone": phone, "code": code, "expires_at": expires_at})
            await conn.execute(PRUNE_SENDERS, float(self.address_limit[1]))
            await conn.execute(PRUNE_CODES)
        if self.settings.login_codes == "log":
            # The one log line that holds a code (the handler flushes every record).
            log.info("login_code phone_last4=%s code=%s", phone[-4:], code)
        return CodeSent(phone, RESEND_AFTER_S, CODE_LIFETIME_S)

    async def _replace_code(self, conn: asyncpg.Connection, phone: str,
                            code: str) -> tuple[str, datetime]:
        row = await conn.fetchrow(SEND_CODE, phone, new_resident_id(), self.code_hash(phone, code),
                                  float(CODE_LIFETIME_S), CODE_TRIES, float(RESEND_AFTER_S))
        if row is None:
            wait_s = await conn.fetchval(RESEND_WAIT_S, phone, float(RESEND_AFTER_S))
            raise _waiting("too_soon", wait_s or 1, "A code was sent to this phone less than "
                           f"{RESEND_AFTER_S} s ago; use it, or ask again later.")
        return row["resident_id"], row["expires_at"]

    async def _count_address(self, conn: asyncpg.Connection, address: str) -> None:
        limit, window_s = self.address_limit
        if not limit:
            return
        address_hash = hmac.new(self._address_key, address.encode(), hashlib.sha256).digest()
        row = await conn.fetchrow(COUNT_ADDRESS, address_hash, float(window_s))
        if row["codes"] > limit:
            raise _waiting("rate_limited", row["wait_s"],
                           "Too many codes were asked for from this address; please wait.")

    def staff_subject(self, phone: str) -> str:
        """A staff member's token `sub`: stable per phone, and not the phone."""
        digest = hmac.new(self._staff_key, phone.encode(), hashlib.sha256).hexdigest()
        return "staff:" + digest[:20]

    async def sign_in(self, phone: str, code: str, role: str = "resident") -> SignedIn:
        """Trade a phone's code for a token: a resident's (created at the first sign-in) or,
        with `role="venue"`, its venue's for a linked staff phone; raises `role_not_supported`,
        `invalid_phone`, `invalid_code`, `code_expired`, `wrong_code` (a try spent),
        `too_many_tries` or `not_staff` (403: the code was right, the phone is no venue's)."""
        if role not in ROLES:
            raise Invalid(f"Only {' and '.join(ROLES)} sign in with a phone code for now.",
                          code="role_not_supported")
        phone = clean_phone(phone)
        if not MOBILE.fullmatch(phone):
            raise invalid_phone()
        if not CODE_DIGITS.fullmatch(code.strip()):
            raise Invalid("A code is the six digits of the message.", code="invalid_code")
        if role == "venue":
            venue_id = await self._check_staff_code(phone, code.strip())
            if isinstance(venue_id, ApiError):
                raise venue_id
            token = mint(self.settings.secret, "venue", self.staff_subject(phone),
                         venue_id=venue_id)
            return SignedIn(token, TOKEN_LIFETIME_S, venue_id=venue_id)
        resident_id = await self._check_resident_code(phone, code.strip())
        if isinstance(resident_id, ApiError):
            raise resident_id
        return SignedIn(mint(self.settings.secret, "resident", resident_id), TOKEN_LIFETIME_S,
                        resident_id=resident_id)

    async def _check_resident_code(self, phone: str, code: str) -> str | ApiError:
        """The resident id for a right code, else the refusal; a wrong try is committed."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._code_row(conn, phone, code)
            if isinstance(row, ApiError):
                return row
            await conn.execute(SPEND_CODE, phone)
            await conn.execute(ADD_RESIDENT, row["resident_id"], phone)
            return await conn.fetchval(RESIDENT_OF_PHONE, phone)

    async def _check_staff_code(self, phone: str, code: str) -> int | ApiError:
        """The staff phone's venue for a right code, else the refusal; a wrong try is
        committed. A right code of a phone linked to no venue is not spent."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._code_row(conn, phone, code)
            if isinstance(row, ApiError):
                return row
            venue_id = await conn.fetchval(VENUE_OF_STAFF, phone)
            if venue_id is None:
                return Forbidden("This phone is not linked to any venue, so it cannot sign in "
                                 "as venue staff; an operator links staff phones "
                                 "(POST /v1/venues/{venue_id}/staff).", code="not_staff")
            await conn.execute(SPEND_CODE, phone)
            return venue_id

    async def _code_row(self, conn: asyncpg.Connection, phone: str,
                        code: str) -> asyncpg.Record | ApiError:
        """The phone's `login_codes` row (locked) when `code` is its live code, else the
        refusal (a wrong code spends a try)."""
        row = await conn.fetchrow(CODE_TO_CHECK, phone, float(RESEND_AFTER_S))
        if row is None or not row["live"]:
            return Invalid("This phone has no code in force (codes live 10 minutes and "
                           "work once); ask for a new one.", code="code_expired")
        if row["tries_left"] <= 0:
            return _waiting("too_many_tries", row["resend_wait_s"],
                            "Too many wrong tries for this code; ask for a new one.")
        if not hmac.compare_digest(row["code_hash"], self.code_hash(phone, code)):
            left = await conn.fetchval(SPEND_TRY, phone)
            return Invalid(_wrong_code_detail(left), code="wrong_code",
                           extra={"tries_left": left})
        return row


def _wrong_code_detail(tries_left: int) -> str:
    if tries_left <= 0:
        return "Wrong code, and no tries are left for it; ask for a new code."
    return f"Wrong code; {tries_left} {'try' if tries_left == 1 else 'tries'} left."


def new_resident_id() -> str:
    """A resident's id: random, so it tells nothing about the phone."""
    return "r_" + secrets.token_hex(10)


def _derived_key(secret: str, purpose: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


# --- /v1 --------------------------------------------------------------------------------------

class LoginCodeIn(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(description="An 11-digit mainland mobile number",
                                       examples=["13800000001"])]


class TokenIn(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(description="The phone the code was sent to")]
    code: Annotated[str, msgspec.Meta(description="The six digits of the message",
                                      examples=["123456"])]
    role: Annotated[str, msgspec.Meta(
        description="'resident', or 'venue' for a staff phone an operator linked to a venue",
        examples=["resident", "venue"])] = "resident"


class CodeSentOut(msgspec.Struct):
    sent: bool
    resend_after_s: int  # a new code for this phone from then on
    expires_in_s: int


class TokenOut(msgspec.Struct, omit_defaults=True):
    token: str  # send as `Authorization: Bearer <token>`; the pages keep it in a cookie
    expires_in_s: int
    resident_id: str | None = None  # role resident
    venue_id: int | None = None  # role venue


def _errors(bad_input: str, too_many: str) -> dict[int, ResponseSpec]:
    return {**documented(413, 503),
            400: ResponseSpec(ErrorBody, description=bad_input),
            429: ResponseSpec(ErrorBody, description=too_many + "; see Retry-After")}


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


@post("/v1/auth/codes", operation_id="sendLoginCode", tags=["auth"], status_code=202,
      responses=_errors("invalid_phone: not an 11-digit mainland mobile; invalid: a bad body",
                        "too_soon: a code went to this phone in the last 60 s; rate_limited: "
                        "too many codes from this address"))
async def send_login_code(request: Request, data: JSONBody[LoginCodeIn],
                          signin: NamedDependency[SignIn]) -> CodeSentOut:
    """Send a six-digit sign-in code to a phone (valid 10 minutes, 5 tries); one per phone per
    60 s."""
    sent = await signin.send_code(data.phone, _address(request))
    return CodeSentOut(True, sent.resend_after_s, sent.expires_in_s)


@post("/v1/auth/tokens", operation_id="createToken", tags=["auth"], status_code=200,
      responses={**_errors(
          "wrong_code (the detail and `tries_left` say how many tries are left), "
          "code_expired, invalid_code, invalid_phone, role_not_supported, invalid",
          "too_many_tries: ask for a new code"),
          403: ResponseSpec(ErrorBody, description="not_staff: role venue, and the phone is "
                            "linked to no venue (its code stays good for a resident)")})
async def create_token(data: JSONBody[TokenIn], signin: NamedDependency[SignIn]) -> TokenOut:
    """Trade a phone's code for a bearer token: a resident's (the first sign-in creates them)
    or, with `role: venue`, a venue token for a staff phone an operator linked to a venue."""
    signed = await signin.sign_in(data.phone, data.code, data.role)
    return TokenOut(signed.token, signed.expires_in_s, signed.resident_id, signed.venue_id)


HANDLERS: list[Any] = [send_login_code, create_token]
