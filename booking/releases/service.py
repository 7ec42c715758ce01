"""Releases: an operator opens a set of courses in one mode (`fcfs`, `window` or `lottery`).

A release is written in one transaction that writes nothing when it refuses: the named course
rows are locked first (the ledger's one order), then the term's advisory lock, so two releases
of one term cannot both pass the cap check with different caps, and two releases naming one
course cannot both take it (the second finds the course taken once the first commits).

A course of an `fcfs` release opens at the gate when its earliest tier opens (the release's
opens_at without tiers); a grab of a caller whose own opening is later is answered `not_open`
before the gate (booking/bookings.py). A course of a draw release gets
its own starts_at as a placeholder opening: the gate keeps it closed until the draw moves the
opening (grabs meanwhile are answered `draw_pending`). The beacon is kept secret until entries
close; before that only its SHA-256 (`beacon_commitment`) is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from booking.core.auth import requires
from booking.core.errors import Conflict, NotFound, Unprocessable, documented
from booking.core.fields import NO_NUL, storable_id
from booking.core.readcache import ReadCache
from booking.ledger.locks import lock_courses
from booking.ledger.term_cap import release_rules_changed
from booking.releases.draw import commitment
from booking.seats.seating import Seats

Mode = Literal["fcfs", "window", "lottery"]
DRAW_MODES = ("window", "lottery")
DEFAULT_WINDOW_S = 120
DEFAULT_CLAIM_HOLD_S = 172_800  # two days to pay for a lottery win
DEFAULT_MAX_WISHES = 5

Moment = Annotated[datetime, msgspec.Meta(tz=True)]
TierName = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=NO_NUL)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Term = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL,
                                   examples=["2026-autumn"])]
TermCap = Annotated[int, msgspec.Meta(ge=1, le=20, description="Seats per resident in the term")]
WindowS = Annotated[int, msgspec.Meta(ge=2, le=3600)]
ClaimHoldS = Annotated[int, msgspec.Meta(ge=60, le=1_209_600)]
MaxWishes = Annotated[int, msgspec.Meta(ge=1, le=10)]
Beacon = Annotated[str, msgspec.Meta(min_length=16, max_length=200, pattern=NO_NUL)]

# Fields only some modes take: (field, the modes that take it).
MODE_FIELDS = (("window_s", ("window",)), ("closes_at", ("lottery",)),
               ("claim_hold_s", ("lottery",)), ("general_sale_at", ("lottery",)),
               ("max_wishes", DRAW_MODES), ("beacon", DRAW_MODES))


class TierIn(msgspec.Struct, forbid_unknown_fields=True):
    name: TierName
    opens_at: Moment


class ReleaseIn(msgspec.Struct, forbid_unknown_fields=True):
    title: Title
    mode: Mode
    course_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=500,
                                                  description="Distinct course ids")]
    term: Term
    opens_at: Moment
    term_cap: TermCap | None = None
    window_s: WindowS | None = None  # window: entries for this long (default 120)
    closes_at: Moment | None = None  # lottery: entries close (after opens_at)
    claim_hold_s: ClaimHoldS | None = None  # lottery: how long a paid win waits (default 2 d)
    general_sale_at: Moment | None = None  # lottery: leftovers first-come (default: the draw)
    max_wishes: MaxWishes | None = None  # draw modes (default 5)
    beacon: Beacon | None = None  # draw modes: sealed until entries close
    tiers: Annotated[list[TierIn], msgspec.Meta(max_length=10)] = msgspec.field(
        default_factory=list)


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    opens_at: datetime


class ReleaseOut(msgspec.Struct):
    id: int
    title: str
    mode: str
    course_ids: list[int]
    term: str
    term_cap: int | None
    opens_at: datetime
    window_s: int | None
    closes_at: datetime | None  # entries close (window: opens_at + window_s); fcfs: None
    claim_hold_s: int | None
    general_sale_at: datetime | None
    max_wishes: int | None
    tiers: list[Tier]
    state: str  # scheduled | open | closed | drawn
    beacon_commitment: str | None  # SHA-256 hex of the beacon's UTF-8
    beacon: str | None  # shown once entries have closed


@dataclass(frozen=True, slots=True)
class Release:
    """A release as Postgres has it (beacon included: never answer this as it is)."""

    id: int
    title: str
    mode: str
    term: str
    term_cap: int | None
    opens_at: datetime
    closes_at: datetime | None
    window_s: int | None
    claim_hold_s: int | None
    general_sale_at: datetime | None
    max_wishes: int | None
    beacon: str | None
    beacon_commitment: str | None
    tiers: tuple[Tier, ...]
    created_at: datetime
    course_ids: tuple[int, ...]
    drawn_at: datetime | None

    @property
    def is_draw(self) -> bool:
        return self.mode in DRAW_MODES

    def state(self, now: datetime) -> str:
        """scheduled before opens_at; then open (fcfs for good, a draw until closes_at);
        closed once entries closed; drawn once the draw is done."""
        if now < self.opens_at:
            return "scheduled"
        if not self.is_draw:
            return "open"
        if self.drawn_at is not None:
            return "drawn"
        assert self.closes_at is not None  # a draw release always closes
        return "open" if now < self.closes_at else "closed"

    def ranked_tiers(self) -> list[str]:
        """Tier names by opening, earliest first (list order on ties): the draw's rank."""
        return [tier.name for tier in sorted(self.tiers, key=lambda tier: tier.opens_at)]

    def tier_opens_at(self, tier: str | None) -> datetime:
        """When the release opens for a member of `tier` (a tier it does not name: opens_at)."""
        for named in self.tiers:
            if named.name == tier:
                return named.opens_at
        return self.opens_at

    def out(self, now: datetime) -> ReleaseOut:
        """The public answer: the beacon only once entries have closed."""
        state = self.state(now)
        return ReleaseOut(
            id=self.id, title=self.title, mode=self.mode, course_ids=list(self.course_ids),
            term=self.term, term_cap=self.term_cap, opens_at=self.opens_at,
            window_s=self.window_s, closes_at=self.closes_at, claim_hold_s=self.claim_hold_s,
            general_sale_at=self.general_sale_at, max_wishes=self.max_wishes,
            tiers=list(self.tiers), state=state, beacon_commitment=self.beacon_commitment,
            beacon=self.beacon if state in ("closed", "drawn") else None)


SELECT_RELEASE = """
SELECT r.id, r.title, r.mode, r.term, r.term_cap, r.opens_at, r.closes_at, r.window_s,
       r.claim_hold_s, r.general_sale_at, r.max_wishes, r.beacon, r.beacon_commitment,
       r.tiers::text AS tiers, r.created_at, d.drawn_at,
       ARRAY(SELECT c.id FROM courses c WHERE c.release_id = r.id ORDER BY c.id) AS course_ids
FROM releases r LEFT JOIN release_draws d ON d.release_id = r.id
WHERE r.id = $1
"""
NOW = "SELECT clock_timestamp()"
TERM_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
# The named courses as a release needs them: whose they are, when they start, who holds them.
COURSES_NAMED = """
SELECT c.id, c.title, c.starts_at, c.release_id,
       EXISTS (SELECT 1 FROM bookings b
               WHERE b.course_id = c.id AND booking_active(b.status)) AS booked,
       EXISTS (SELECT 1 FROM waitlist w
               WHERE w.course_id = c.id AND w.status = 'waiting') AS waited
FROM courses c WHERE c.id = ANY($1::bigint[]) ORDER BY c.id
"""
TERM_CAP = "SELECT term_cap FROM releases WHERE term = $1 LIMIT 1"
INSERT_RELEASE = """
INSERT INTO releases (title, mode, term, term_cap, opens_at, closes_at, window_s, claim_hold_s,
                      general_sale_at, max_wishes, beacon, beacon_commitment, tiers)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb) RETURNING id
"""
# fcfs: the release's opening; draw modes: the course's start, until the draw moves it.
JOIN_RELEASE = """
UPDATE courses SET release_id = $1, updated_at = now(),
                   sales_open_at = CASE WHEN $3::text = 'fcfs' THEN $4::timestamptz
                                        ELSE starts_at END
WHERE id = ANY($2::bigint[])
"""


async def fetch_release(conn_or_pool: asyncpg.Connection | asyncpg.Pool,
                        release_id: int) -> Release | None:
    """The release with this id (tiers, course ids and drawn_at included), or None."""
    row = await conn_or_pool.fetchrow(SELECT_RELEASE, release_id)
    if row is None:
        return None
    fields = dict(row)
    fields["tiers"] = tuple(msgspec.json.decode(row["tiers"], type=list[Tier]))
    fields["course_ids"] = tuple(row["course_ids"])
    return Release(**fields)


async def fetch_draw_release(pool: asyncpg.Pool, release_id: int) -> Release:
    """A window or lottery release; 404 `not_found`, or 409 `no_draw` for a first-come one (no
    entries, no draw)."""
    release = await fetch_release(pool, release_id) if storable_id(release_id) else None
    if release is None:
        raise NotFound.of("release")
    if not release.is_draw:
        raise Conflict("This release is first come, first served: it takes no entries and has "
                       "no draw; grab its courses instead.", code="no_draw",
                       extra={"release_id": release.id})
    return release


@dataclass(frozen=True, slots=True)
class Planned:
    """A release body checked on its own, with each mode's defaults filled in."""

    data: ReleaseIn
    closes_at: datetime | None
    window_s: int | None
    claim_hold_s: int | None
    max_wishes: int | None


def _invalid(detail: str, field: str) -> Unprocessable:
    return Unprocessable(detail, code="invalid", extra={"field": field})


def _bad_times(detail: str, **extra: Any) -> Unprocessable:
    return Unprocessable(detail, code="bad_times", extra=extra)


def planned(data: ReleaseIn) -> Planned:
    """The body's checks that need no database: fields of other modes, duplicates, the beacon
    and the times among themselves. msgspec has checked types and ranges (a 400); these are
    422s."""
    for name, modes in MODE_FIELDS:
        if getattr(data, name) is not None and data.mode not in modes:
            raise _invalid(f"{name} is for {' and '.join(modes)} releases, not {data.mode}.",
                           name)
    if len(set(data.course_ids)) != len(data.course_ids):
        raise _invalid("course_ids names a course more than once.", "course_ids")
    if len({tier.name for tier in data.tiers}) != len(data.tiers):
        raise _invalid("Each tier may be named once.", "tiers")
    if data.mode == "lottery" and data.closes_at is None:
        raise _invalid("A lottery needs closes_at, when its entries close.", "closes_at")
    if data.mode in DRAW_MODES and data.beacon is None:
        raise Unprocessable(
            "A draw needs a beacon (16-200 characters, sealed until entries close).",
            code="beacon_required")
    late = [tier.name for tier in data.tiers if tier.opens_at > data.opens_at]
    if late:
        raise _bad_times(f"A tier cannot open after the release: {', '.join(late)}.",
                         tiers=late)
    window_s = (data.window_s or DEFAULT_WINDOW_S) if data.mode == "window" else None
    closes_at = data.opens_at + timedelta(seconds=window_s) if window_s else data.closes_at
    if closes_at is not None and closes_at <= data.opens_at:
        raise _bad_times("closes_at must be after opens_at.")
    if data.general_sale_at is not None and closes_at is not None \
            and data.general_sale_at < closes_at:
        raise _bad_times("general_sale_at cannot be before closes_at.")
    return Planned(
        data, closes_at, window_s,
        (data.claim_hold_s or DEFAULT_CLAIM_HOLD_S) if data.mode == "lottery" else None,
        (data.max_wishes or DEFAULT_MAX_WISHES) if data.mode in DRAW_MODES else None)


def _check_courses(plan: Planned, asked: list[int], rows: list[asyncpg.Record]) -> None:
    """Refuse unless every course exists, is in no release, has nobody booked or waiting, and
    starts after the release's last time that must come before it."""
    found = {row["id"] for row in rows}
    unknown = [course_id for course_id in asked if course_id not in found]
    if unknown:
        raise Unprocessable(f"No course with id {', '.join(map(str, unknown))}.",
                            code="unknown_course", extra={"course_ids": unknown})
    for row in rows:
        if row["release_id"] is not None:
            raise Conflict(f"Course {row['id']} already belongs to release {row['release_id']}.",
                           code="course_in_release",
                           extra={"course_id": row["id"], "release_id": row["release_id"]})
    for row in rows:
        if row["booked"] or row["waited"]:
            raise Conflict(f"Course {row['id']} already has bookings or people waiting; only "
                           "courses nobody holds yet can join a release.",
                           code="course_has_bookings", extra={"course_id": row["id"]})
    data = plan.data
    deadlines = [("closes_at", plan.closes_at), ("general_sale_at", data.general_sale_at)] \
        if data.mode in DRAW_MODES else [("opens_at", data.opens_at)]
    for row in rows:
        for name, moment in deadlines:
            if moment is not None and moment > row["starts_at"]:
                raise _bad_times(
                    f"The release's {name} is after course {row['id']} ({row['title']}) "
                    f"starts at {row['starts_at'].isoformat()}.",
                    course_id=row["id"], starts_at=row["starts_at"].isoformat())


class Releases:
    """The releases domain's service: what the `/v1` handlers and the pages call."""

    def __init__(self, pool: asyncpg.Pool, seats: Seats,
                 reads: ReadCache | None = None) -> None:
        self.pool = pool
        self.seats = seats
        self.reads = reads  # the course pages' cache, cleared when courses join a release

    async def one(self, release_id: int) -> ReleaseOut:
        """A release as anyone may see it (its state by Postgres's clock), or NotFound."""
        if not storable_id(release_id):
            raise NotFound.of("release")
        async with self.pool.acquire() as conn:
            release = await fetch_release(conn, release_id)
            if release is None:
                raise NotFound.of("release")
            return release.out(await conn.fetchval(NOW))

    async def create(self, data: ReleaseIn) -> ReleaseOut:
        """Create a release and move its courses into it, all or nothing (see the module)."""
        plan = planned(data)
        storable = [course_id for course_id in data.course_ids if storable_id(course_id)]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await lock_courses(conn, storable)
                await conn.execute(TERM_LOCK, data.term)
                _check_courses(plan, data.course_ids, await conn.fetch(COURSES_NAMED, storable))
                await _check_cap(conn, data.term, data.term_cap)
                release_id = await conn.fetchval(
                    INSERT_RELEASE, data.title, data.mode, data.term, data.term_cap,
                    data.opens_at, plan.closes_at, plan.window_s, plan.claim_hold_s,
                    data.general_sale_at, plan.max_wishes, data.beacon,
                    None if data.beacon is None else commitment(data.beacon),
                    msgspec.json.encode(data.tiers).decode())
                first_opening = min([data.opens_at, *(t.opens_at for t in data.tiers)])
                await conn.execute(JOIN_RELEASE, release_id, storable, data.mode,
                                   first_opening)
            release = await fetch_release(conn, release_id)
            now = await conn.fetchval(NOW)
        release_rules_changed(self.pool)  # this process's grabs see the release at once
        if self.reads is not None:
            self.reads.clear()
        for course_id in sorted(storable):  # the gate learns each course's new opening
            await self.seats.loader.load(course_id)
        assert release is not None
        return release.out(now)


async def _check_cap(conn: asyncpg.Connection, term: str, cap: int | None) -> None:
    """All releases of a term share one cap (hold the term's advisory lock)."""
    existing = await conn.fetchrow(TERM_CAP, term)
    if existing is not None and existing["term_cap"] != cap:
        theirs = existing["term_cap"]
        said = "no cap" if theirs is None else f"a cap of {theirs}"
        raise Conflict(f"The term {term!r} has {said}; every release of a term shares it.",
                       code="term_cap_mismatch", extra={"term": term, "term_cap": theirs})


# --- /v1 --------------------------------------------------------------------------------------

ReleaseId = Annotated[int, Parameter(description="Release id")]


@post("/v1/releases", operation_id="createRelease", tags=["releases"],
      **requires("operator", errors=(409, 413, 422)))
async def create_release(data: JSONBody[ReleaseIn],
                         releases: NamedDependency[Releases]) -> ReleaseOut:
    """Open courses in a release: `fcfs` (grabs from opens_at), `window` (ranked wishes for
    window_s seconds, then drawn by the service) or `lottery` (wishes until closes_at, drawn
    when an operator asks). Refused, writing nothing: 422 `unknown_course`, `bad_times`,
    `beacon_required`, `invalid` (a field of another mode); 409 `course_in_release`,
    `course_has_bookings`, `term_cap_mismatch`."""
    return await releases.create(data)


@get("/v1/releases/{release_id:int}", operation_id="getRelease", tags=["releases"],
     responses=documented(400, 404, 503))
async def get_release(release_id: ReleaseId, releases: NamedDependency[Releases]) -> ReleaseOut:
    """A release, its state and its beacon's commitment (the beacon once entries closed)."""
    return await releases.one(release_id)


HANDLERS: list[Any] = [create_release, get_release]
