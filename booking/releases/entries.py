"""A resident's entry in a `window` or `lottery` release: ranked wishes, one entry per resident.

An entry may be made, replaced or withdrawn from the caller's opening (their tier's, if the
release names it) until entries close. The close is decided under the release's entries lock
(an advisory lock): an entry holds it shared while it checks the time and writes, and freezing
the entries file takes it exclusively (booking/releases/drawing.py), so every entry either is
in the frozen file or was refused `entry_closed`. Times are Postgres's clock, the same clock
that froze the file.
"""

from __future__ import annotations

import math
import secrets
import time
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter

from booking.core.auth import Principal, requires
from booking.core.errors import Conflict, NotFound, Unprocessable
from booking.core.readcache import ReadCache
from booking.releases.service import Release, fetch_draw_release

# The release's entries lock held shared (freezing takes it exclusively), then its close and
# Postgres's clock. An advisory lock rather than the row's: thousands of entries at an opening
# sharing one row lock cost Postgres a multixact each.
LOCK_RELEASE = """
SELECT pg_advisory_xact_lock_shared($2::int, $1::int) AS locked
"""
CLOSE_AND_NOW = "SELECT closes_at, clock_timestamp() AS now FROM releases WHERE id = $1"
ENTRIES_LOCK = 1309  # the advisory lock space of releases' entries (key: the release id)
# An entry this long or more before the caller's opening (by this process's clock) is refused
# without a transaction; closer to it, Postgres's clock decides.
EARLY_REFUSAL_MARGIN_S = 1.0
FROZEN = "SELECT EXISTS (SELECT 1 FROM release_draws WHERE release_id = $1)"
# An entry in one statement (one round trip at an opening's rush): the entries lock shared, then
# the close, the freeze and the caller's opening checked by Postgres's clock once it is held
# (a freeze happens only after the close, so an entry that waited for one is past the close),
# then the entry made or replaced. No row comes back from `entered` when refused.
ENTER = """
WITH entries_lock AS (
    SELECT pg_advisory_xact_lock_shared($7::int, $1::int)
), state AS (
    SELECT r.closes_at, clock_timestamp() AS now,
           EXISTS (SELECT 1 FROM release_draws d WHERE d.release_id = r.id) AS frozen
    FROM entries_lock, releases r WHERE r.id = $1
), entered AS (
    INSERT INTO release_entries AS e (release_id, resident_id, entry_id, tier, wishes)
    SELECT $1, $2, $3, $4, $5 FROM state
    WHERE state.now >= $6 AND state.now < state.closes_at AND NOT state.frozen
    ON CONFLICT (release_id, resident_id) DO UPDATE
        SET wishes = EXCLUDED.wishes, tier = EXCLUDED.tier, updated_at = now()
    RETURNING entry_id, tier, wishes, ticket, results, (xmax = 0) AS created
)
SELECT s.closes_at, s.now, s.frozen, n.* FROM state s LEFT JOIN entered n ON true
"""
ENTRY_OF = """
SELECT entry_id, tier, wishes, ticket, results FROM release_entries
WHERE release_id = $1 AND resident_id = $2
"""
WITHDRAW = """
DELETE FROM release_entries WHERE release_id = $1 AND resident_id = $2 RETURNING entry_id
"""


class EntryIn(msgspec.Struct, forbid_unknown_fields=True):
    wishes: Annotated[list[int], msgspec.Meta(
        max_length=50, description="Course ids of the release, best first",
        examples=[[12, 15, 11]])]


class WishOutcome(msgspec.Struct, omit_defaults=True):
    course_id: int
    outcome: str  # won | waitlist | none
    position: int | None = None  # waitlist only: 1 = next to get a freed seat
    booking_id: str | None = None  # won only: the booking the draw made


class EntryOut(msgspec.Struct, omit_defaults=True):
    entry_id: str  # the receipt: the same when the entry is replaced
    release_id: int
    wishes: list[int]
    tier: str | None
    closes_at: datetime
    ticket: str | None = None  # after the draw
    results: list[WishOutcome] | None = None  # after the draw, in wish order


class Withdrawn(msgspec.Struct):
    entry_id: str
    status: str = "withdrawn"


class Entries:
    """The entries domain's service: what the `/v1` handlers and the pages call."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.releases = ReadCache()  # a release's times, for refusals only (see `put`)

    async def put(self, release_id: int, caller: Principal,
                  wishes: list[int]) -> tuple[EntryOut, bool]:
        """Make or replace the caller's entry; (the entry, whether it is new)."""
        release = await self.releases.get(("release", release_id),
                                          lambda: fetch_draw_release(self.pool, release_id))
        _check_wishes(release, wishes)
        tier = caller.tier if caller.tier in {t.name for t in release.tiers} else None
        opens_at = release.tier_opens_at(tier)
        if time.time() < opens_at.timestamp() - EARLY_REFUSAL_MARGIN_S:
            # Before the opening (bots poll then): refused without a transaction. Near it and
            # after, the transaction decides by Postgres's clock, as it does for the close.
            raise _not_open(opens_at, opens_at.timestamp() - time.time())
        for _ in range(3):  # a receipt already taken (1 in 2^80) is drawn again
            try:
                row = await self.pool.fetchrow(ENTER, release.id, caller.sub, _receipt(), tier,
                                               wishes, opens_at, ENTRIES_LOCK)
                break
            except asyncpg.UniqueViolationError:
                continue
        else:
            raise RuntimeError("could not draw an unused entry receipt")
        if row["entry_id"] is None:
            _refuse(row["now"], row["closes_at"], row["frozen"], opens_at)
        return _entry_out(release, row), row["created"]

    async def one(self, release_id: int, resident_id: str) -> EntryOut:
        """The resident's entry, with its ticket and results once drawn."""
        release = await fetch_draw_release(self.pool, release_id)
        row = await self.pool.fetchrow(ENTRY_OF, release.id, resident_id)
        if row is None:
            raise NotFound("You have no entry in this release.")
        return _entry_out(release, row)

    async def withdraw(self, release_id: int, caller: Principal) -> Withdrawn:
        """Withdraw the caller's entry before entries close."""
        release = await fetch_draw_release(self.pool, release_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await _while_entries_open(conn, release)
            entry_id = await conn.fetchval(WITHDRAW, release.id, caller.sub)
        if entry_id is None:
            raise NotFound("You have no entry in this release.")
        return Withdrawn(entry_id)


def _check_wishes(release: Release, wishes: list[int]) -> None:
    if not wishes:
        raise Unprocessable("Name at least one course you wish for.", code="no_wishes")
    limit = release.max_wishes or 1
    if len(wishes) > limit:
        raise Unprocessable(f"At most {limit} wishes in this release.", code="too_many_wishes",
                            extra={"max_wishes": limit})
    if len(set(wishes)) != len(wishes):
        raise Unprocessable("Each course may be wished for once.", code="duplicate_wish")
    unknown = [c for c in wishes if c not in set(release.course_ids)]
    if unknown:
        raise Unprocessable("Not a course of this release: "
                            + ", ".join(map(str, unknown)) + ".", code="unknown_course",
                            extra={"course_ids": unknown})


async def _while_entries_open(conn: asyncpg.Connection, release: Release) -> None:
    """Hold the release's entries lock shared for the rest of the transaction (a withdrawal),
    then refuse unless entries have neither closed nor been frozen."""
    await conn.execute(LOCK_RELEASE, release.id, ENTRIES_LOCK)
    locked = await conn.fetchrow(CLOSE_AND_NOW, release.id)
    _refuse(locked["now"], locked["closes_at"], await conn.fetchval(FROZEN, release.id), None)


def _refuse(now: datetime, closes_at: datetime, frozen: bool,
            opens_at: datetime | None) -> None:
    """409 `entry_closed` or `not_open` (the caller's own opening), unless entries are open."""
    if now >= closes_at or frozen:
        raise Conflict(f"Entries closed at {closes_at.isoformat()}.", code="entry_closed",
                       extra={"closes_at": closes_at.isoformat()})
    if opens_at is not None and now < opens_at:
        raise _not_open(opens_at, (opens_at - now).total_seconds())


def _not_open(opens_at: datetime, wait_s: float) -> Conflict:
    return Conflict(f"Entries open at {opens_at.isoformat()}.", code="not_open",
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
                    extra={"opens_at": opens_at.isoformat()})


RECEIPT_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's: no i, l, o, u


def _receipt() -> str:
    """A receipt nobody can guess: 80 random bits as 16 letters and digits hard to misread."""
    number = secrets.randbits(80)
    return "".join(RECEIPT_ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(16)))


def _entry_out(release: Release, row: asyncpg.Record) -> EntryOut:
    assert release.closes_at is not None
    results = None if row["results"] is None else msgspec.json.decode(
        row["results"], type=list[WishOutcome])  # asyncpg gives jsonb as its text
    return EntryOut(row["entry_id"], release.id, list(row["wishes"]), row["tier"],
                    release.closes_at, row["ticket"], results)


# --- /v1 --------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]
ReleaseId = Annotated[int, Parameter(description="Release id")]


@put("/v1/releases/{release_id:int}/entry", operation_id="putEntry", tags=["releases"],
     status_code=201, **requires("resident", errors=(404, 409, 413, 422), also={
         200: ResponseSpec(EntryOut, description="Your entry was replaced (same entry_id)")}))
async def put_entry(request: Caller, release_id: ReleaseId, data: JSONBody[EntryIn],
                    entries: NamedDependency[Entries]) -> Response[EntryOut]:
    """Enter (or replace) your ranked wishes in a window or lottery release: 201 when new, 200
    when replaced. Refused: 409 `not_open` (with your opens_at), `entry_closed`, `no_draw`;
    422 `no_wishes`, `too_many_wishes`, `duplicate_wish`, `unknown_course`."""
    entry, created = await entries.put(release_id, request.user, data.wishes)
    return Response(entry, status_code=201 if created else 200)


@get("/v1/releases/{release_id:int}/entry", operation_id="getEntry", tags=["releases"],
     **requires("resident", errors=(404, 409)))
async def get_entry(request: Caller, release_id: ReleaseId,
                    entries: NamedDependency[Entries]) -> EntryOut:
    """Your entry; after the draw also its ticket and each wish's outcome."""
    return await entries.one(release_id, request.user.sub)


@delete("/v1/releases/{release_id:int}/entry", operation_id="withdrawEntry", tags=["releases"],
        status_code=200, **requires("resident", errors=(404, 409)))
async def withdraw_entry(request: Caller, release_id: ReleaseId,
                         entries: NamedDependency[Entries]) -> Withdrawn:
    """Withdraw your entry before entries close (409 `entry_closed` after)."""
    return await entries.withdraw(release_id, request.user)


HANDLERS: list[Any] = [put_entry, get_entry, withdraw_entry]
