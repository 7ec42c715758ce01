"""The draw of a `window` or `lottery` release: freeze, draw, apply, publish.

1. **Freeze** (at the close, by the closer or by whoever asks first): under the release row's
   lock and the entries lock (both exclusive), the entries become the entries file
   (booking/releases/draw.py's format), each with its cap (the term cap minus the seats its
   resident then holds in the term), and every course's seats are its free seats then.
   Entries hold the entries lock shared while they write, so an entry is either in the file
   or was refused.
2. **Draw and apply**, in one Postgres transaction under the same lock (so concurrent calls on
   any number of workers draw once): the algorithm runs on the frozen file; each win becomes the
   booking a grab would make (a lottery's paid wins are held for claim_hold_s; a win whose
   resident reached the term's cap since the close is declined, and its seat goes down the
   waitlist as a cancelled one would); the waitlists are
   written in draw order; leftovers open first-come (a window's at once, a lottery's from
   general_sale_at); the results file and the record are kept. Then every course is reloaded
   into the gate from Postgres (counters, holders, waitlists).
3. **Publish**: the record, and the two files byte for byte as they were hashed.

Until the draw, the release's courses stay closed at the gate (their opening is a placeholder,
the course's own start) and a grab or a waitlist join is answered `draw_pending`
(`PendingDraws`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from booking.core.auth import requires
from booking.core.errors import Conflict, documented
from booking.core.readcache import ReadCache
from booking.ledger.locks import lock_courses
from booking.ledger.promotions import promote_waiting
from booking.releases import draw as algorithm
from booking.releases.entries import ENTRIES_LOCK
from booking.releases.service import Release, fetch_draw_release, fetch_release
from booking.seats import Decision, Outcome
from booking.seats.seating import Seats

log = logging.getLogger("booking.releases.drawing")

# Freezing and drawing take the entries lock first (entries hold it shared while they write),
# then the release row: one draw at a time. NO KEY UPDATE, so an entry's foreign-key check on
# the row (KEY SHARE) never waits for it: the two locks are taken in one order by everyone.
LOCK_ENTRIES = "SELECT pg_advisory_xact_lock($2::int, $1::int)"
LOCK_RELEASE = "SELECT clock_timestamp() FROM releases WHERE id = $1 FOR NO KEY UPDATE"
DRAW_ROW = """
SELECT entries_file, seats, results_file, record, drawn_at FROM release_draws
WHERE release_id = $1
"""
ENTRIES = """
SELECT entry_id, resident_id, tier, wishes FROM release_entries
WHERE release_id = $1 ORDER BY entry_id
"""
# Seats at close: the capacity, less any booking a grab already in flight when the release was
# created wrote after it (the creation refuses courses with bookings, so normally none).
SEATS_AT_CLOSE = """
SELECT id, greatest(capacity - active_bookings, 0) AS seats FROM courses
WHERE release_id = $1 ORDER BY id
"""
# Seats each resident holds in a term's courses (held or confirmed).
HELD_IN_TERM = """
SELECT b.resident_id, count(*)::int AS held
FROM bookings b JOIN courses c ON c.id = b.course_id JOIN releases r ON r.id = c.release_id
WHERE r.term = $1 AND booking_active(b.status) AND b.resident_id = ANY($2::text[])
GROUP BY b.resident_id
"""
FREEZE = "INSERT INTO release_draws (release_id, entries_file, seats) VALUES ($1, $2, $3)"
# A win becomes the booking a grab would make; a lottery holds its paid wins for claim_hold_s.
BOOK_WINS = """
INSERT INTO bookings (id, course_id, resident_id, status, expires_at)
SELECT n.id, n.course_id, n.resident_id, new_booking_status(hold.s), new_booking_expiry(hold.s)
FROM unnest($1::uuid[], $2::bigint[], $3::text[]) WITH ORDINALITY AS n(id, course_id,
                                                                       resident_id, i)
JOIN courses c ON c.id = n.course_id
CROSS JOIN LATERAL (SELECT CASE WHEN c.price_cents > 0
    THEN coalesce($4::integer, course_hold_s(c.price_cents, c.hold_minutes)) ELSE 0 END) AS hold(s)
ORDER BY n.i
"""
WAIT_IN_ORDER = """
INSERT INTO waitlist (course_id, resident_id)
SELECT n.course_id, n.resident_id
FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS n(course_id, resident_id, i)
ORDER BY n.i
"""
OPEN_LEFTOVERS = """
UPDATE courses SET sales_open_at = least(coalesce($2, now()), starts_at), updated_at = now()
WHERE release_id = $1
"""
KEEP_RESULTS = """
UPDATE release_entries e SET ticket = n.ticket, results = n.results::jsonb
FROM unnest($2::text[], $3::text[], $4::text[]) AS n(entry_id, ticket, results)
WHERE e.release_id = $1 AND e.entry_id = n.entry_id
"""
KEEP_DRAW = """
UPDATE release_draws SET results_file = $2, record = $3::json, drawn_at = $4
WHERE release_id = $1
"""
DUE = """
SELECT r.id FROM releases r LEFT JOIN release_draws d ON d.release_id = r.id
WHERE r.closes_at <= now() AND (d.release_id IS NULL OR (r.mode = 'window' AND d.drawn_at IS NULL))
ORDER BY r.closes_at LIMIT 20
"""
PENDING_OF_COURSE = """
SELECT r.id AS release_id, (extract(epoch FROM c.starts_at) * 1000)::bigint AS placeholder_ms
FROM courses c JOIN releases r ON r.id = c.release_id
LEFT JOIN release_draws d ON d.release_id = r.id
WHERE c.id = $1 AND r.mode <> 'fcfs' AND d.drawn_at IS NULL
"""
JSONL = "application/jsonl; charset=utf-8"


@dataclass(frozen=True, slots=True)
class DrawRecord:
    record: dict[str, Any]
    created: bool  # False: drawn before this call


class Draws:
    """The draw domain's service: freeze, draw and apply, and the published files."""

    def __init__(self, pool: asyncpg.Pool, seats: Seats) -> None:
        self.pool = pool
        self.seats = seats

    async def draw(self, release_id: int) -> DrawRecord:
        """Draw the release (once: a drawn release answers its record again)."""
        release = await fetch_draw_release(self.pool, release_id)
        async with self.pool.acquire() as conn, conn.transaction():
            now = await _lock(conn, release)
            _closed(release, now)
            row = await conn.fetchrow(DRAW_ROW, release.id) or await _freeze(conn, release)
            if row["drawn_at"] is not None:
                return DrawRecord(json.loads(row["record"]), created=False)
            record, declined = await _draw_and_apply(conn, release, row, now)
        for course_id in release.course_ids:  # counters, holders and waitlists from Postgres
            await self.seats.loader.load(course_id)
        for course_id in sorted(set(declined)):  # a declined win passes down the waitlist
            await promote_waiting(self.pool, self.seats.gate, course_id)
        log.info("release %s drawn: %s entries", release.id, record["entries_count"])
        return DrawRecord(record, created=True)

    async def freeze(self, release_id: int) -> None:
        """Freeze the entries of a release whose entries have closed (no-op once frozen)."""
        release = await fetch_draw_release(self.pool, release_id)
        async with self.pool.acquire() as conn, conn.transaction():
            _closed(release, await _lock(conn, release))
            if await conn.fetchrow(DRAW_ROW, release.id) is None:
                await _freeze(conn, release)

    async def record(self, release_id: int) -> dict[str, Any]:
        """The draw's record; 409 `not_drawn` before the draw."""
        release = await fetch_draw_release(self.pool, release_id)
        row = await self.pool.fetchrow(DRAW_ROW, release.id)
        if row is None or row["drawn_at"] is None:
            raise _not_drawn(release)
        return json.loads(row["record"])

    async def entries_file(self, release_id: int) -> bytes:
        """The frozen entries file, from the close (frozen now if nobody has yet)."""
        release = await fetch_draw_release(self.pool, release_id)
        row = await self.pool.fetchrow(DRAW_ROW, release.id)
        if row is None:
            await self.freeze(release.id)
            row = await self.pool.fetchrow(DRAW_ROW, release.id)
        return bytes(row["entries_file"])

    async def results_file(self, release_id: int) -> bytes:
        release = await fetch_draw_release(self.pool, release_id)
        row = await self.pool.fetchrow(DRAW_ROW, release.id)
        if row is None or row["drawn_at"] is None:
            raise _not_drawn(release)
        return bytes(row["results_file"])

    async def close_due(self) -> int:
        """Freeze every release whose entries have closed and draw the windows among them
        (the closer's round); how many it handled."""
        due = [row["id"] for row in await self.pool.fetch(DUE)]
        for release_id in due:
            release = await fetch_release(self.pool, release_id)
            if release is None:
                continue
            if release.mode == "window":
                await self.draw(release_id)
            else:
                await self.freeze(release_id)
        return len(due)


async def close_forever(draws: Draws, interval_s: float = 1.0) -> None:
    """The closer: freezes entries at the close and draws windows within a few seconds of it,
    unprompted. Safe on many workers at once: the release row's lock lets one draw."""
    while True:
        try:
            await draws.close_due()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round tries again
            log.warning("closer round failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval_s)


class PendingDraws:
    """Which courses wait for their release's draw: a grab or a join of one is answered
    `draw_pending`. Asked only when the gate refused a course as not open (or, for a join, as
    having a free seat). Until the draw a release's courses open at a placeholder, their own
    start; a `not_open` at any other time means the draw has moved the opening, so a grab is
    never told `draw_pending` after the draw, however old this process's memory of it (one
    second). A join asks Postgres each time: joins are few, and the gate tells it nothing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.reads = ReadCache()

    async def refusal(self, course_id: int, decision: Decision) -> Conflict | None:
        if decision.outcome is Outcome.NOT_OPEN:
            row = await self.reads.get(("pending-draw", course_id), lambda: self.pool.fetchrow(
                PENDING_OF_COURSE, course_id))
            if row is None or row["placeholder_ms"] != decision.opens_at_ms:
                return None
        else:
            row = await self.pool.fetchrow(PENDING_OF_COURSE, course_id)
            if row is None:
                return None
        return Conflict("This course's seats are given by its release's draw; enter your "
                        "wishes in the release instead.", code="draw_pending",
                        extra={"release_id": row["release_id"]})


# --- freeze, draw, apply ------------------------------------------------------------------


async def _lock(conn: asyncpg.Connection, release: Release) -> datetime:
    """The entries lock, then the release row, in this order (see LOCK_RELEASE); Postgres's
    clock once both are held."""
    await conn.execute(LOCK_ENTRIES, release.id, ENTRIES_LOCK)
    return await conn.fetchval(LOCK_RELEASE, release.id)


def _closed(release: Release, now: datetime) -> None:
    assert release.closes_at is not None
    if now < release.closes_at:
        raise Conflict(f"Entries are open until {release.closes_at.isoformat()}.",
                       code="entries_open", extra={"closes_at": release.closes_at.isoformat()})


def _not_drawn(release: Release) -> Conflict:
    return Conflict("This release has not been drawn yet.", code="not_drawn",
                    extra={"release_id": release.id})


async def _freeze(conn: asyncpg.Connection, release: Release) -> asyncpg.Record:
    """Write the entries file and the seats at close; the new release_draws row. The caller
    holds the entries lock (`_lock`): entries being written have finished."""
    rows = await conn.fetch(ENTRIES, release.id)
    caps = await _caps(conn, release, [row["resident_id"] for row in rows])
    entries = [algorithm.Entry(row["entry_id"], row["tier"], caps[row["resident_id"]],
                               tuple(row["wishes"])) for row in rows]
    seats = [{"course_id": row["id"], "seats": row["seats"]}
             for row in await conn.fetch(SEATS_AT_CLOSE, release.id)]
    await conn.execute(FREEZE, release.id, algorithm.entries_file(entries), json.dumps(seats))
    return await conn.fetchrow(DRAW_ROW, release.id)


async def _caps(conn: asyncpg.Connection, release: Release,
                residents: list[str]) -> dict[str, int]:
    """Each resident's cap in this draw: the term cap minus the seats they hold in the term
    (max_wishes when the release has no cap)."""
    if release.term_cap is None:
        return dict.fromkeys(residents, release.max_wishes or 1)
    held = {row["resident_id"]: row["held"]
            for row in await conn.fetch(HELD_IN_TERM, release.term, residents)}
    return {r: max(0, release.term_cap - held.get(r, 0)) for r in residents}


async def _draw_and_apply(conn: asyncpg.Connection, release: Release, frozen: asyncpg.Record,
                          now: datetime) -> tuple[dict[str, Any], list[int]]:
    """Draw, book the wins, write the waitlists, open the leftovers, keep the files: the
    record, and the courses whose declined wins wait for the waitlist's first."""
    entries = algorithm.read_entries(bytes(frozen["entries_file"]))
    seats = {c["course_id"]: c["seats"] for c in json.loads(frozen["seats"])}
    tiers = release.ranked_tiers()
    rounds = release.term_cap or release.max_wishes or 1
    drawn = algorithm.draw(release.id, entries, seats, tiers, rounds, release.beacon or "")
    residents = {row["entry_id"]: row["resident_id"]
                 for row in await conn.fetch(ENTRIES, release.id)}
    await lock_courses(conn, release.course_ids)
    booked, declined = await _book_wins(conn, release, drawn, residents)
    await _write_waitlists(conn, drawn, residents)
    await conn.execute(OPEN_LEFTOVERS, release.id,
                       release.general_sale_at if release.mode == "lottery" else None)
    results = algorithm.results_file(drawn.results)
    await _keep_results(conn, release, drawn, booked)
    record = {"release_id": release.id, "algorithm": algorithm.ALGORITHM, "rounds": rounds,
              "tiers": tiers,
              "courses": [{"course_id": c, "seats": n} for c, n in sorted(seats.items())],
              "entries_count": len(entries), "entries_digest": drawn.entries_digest,
              "beacon_commitment": release.beacon_commitment, "beacon": release.beacon,
              "seed": drawn.seed, "results_digest": algorithm.digest(results),
              "entries_url": f"/v1/releases/{release.id}/entries.jsonl",
              "results_url": f"/v1/releases/{release.id}/results.jsonl",
              "drawn_at": now.isoformat()}
    await conn.execute(KEEP_DRAW, release.id, results, json.dumps(record), now)
    return record, declined


async def _book_wins(conn: asyncpg.Connection, release: Release, drawn: algorithm.Drawn,
                     residents: dict[str, str]) -> tuple[dict[tuple[str, int], str], list[int]]:
    """One booking per win: the booking id of each (entry, course), and the courses of wins
    declined because their resident reached the term's cap elsewhere since the close."""
    room = await _caps(conn, release, sorted(set(residents.values())))
    booked: dict[tuple[str, int], str] = {}
    declined: list[int] = []
    for course_id, winners in sorted(drawn.winners.items()):
        for entry_id in winners:
            resident = residents[entry_id]
            if room[resident] <= 0:
                declined.append(course_id)
                continue
            room[resident] -= 1
            booked[(entry_id, course_id)] = str(uuid.uuid4())
    if booked:
        keys = list(booked)
        await conn.execute(BOOK_WINS, [booked[k] for k in keys], [c for _, c in keys],
                           [residents[e] for e, _ in keys],
                           release.claim_hold_s if release.mode == "lottery" else None)
    return booked, declined


async def _write_waitlists(conn: asyncpg.Connection, drawn: algorithm.Drawn,
                           residents: dict[str, str]) -> None:
    places = [(course_id, residents[entry_id])
              for course_id, waiting in sorted(drawn.waitlists.items()) for entry_id in waiting]
    if places:
        await conn.execute(WAIT_IN_ORDER, [c for c, _ in places], [r for _, r in places])


async def _keep_results(conn: asyncpg.Connection, release: Release, drawn: algorithm.Drawn,
                        booked: dict[tuple[str, int], str]) -> None:
    """Each entry's ticket and per-wish results (with the booking a win made), for GET entry."""
    ids, tickets, results = [], [], []
    for entry in drawn.results:
        ids.append(entry.entry_id)
        tickets.append(entry.ticket)
        results.append(json.dumps([_wish_result(entry.entry_id, wish, booked)
                                   for wish in entry.results]))
    if ids:
        await conn.execute(KEEP_RESULTS, release.id, ids, tickets, results)


def _wish_result(entry_id: str, wish: algorithm.WishResult,
                 booked: dict[tuple[str, int], str]) -> dict[str, Any]:
    out: dict[str, Any] = {"course_id": wish.course_id, "outcome": wish.outcome}
    if wish.position is not None:
        out["position"] = wish.position
    if (entry_id, wish.course_id) in booked:  # a win, unless declined at the cap
        out["booking_id"] = booked[(entry_id, wish.course_id)]
    return out


# --- /v1 --------------------------------------------------------------------------------------

ReleaseId = Annotated[int, Parameter(description="Release id")]


@post("/v1/releases/{release_id:int}/draw", operation_id="drawRelease", tags=["releases"],
      status_code=201, **requires("operator", errors=(404, 409), also={
          200: ResponseSpec(dict[str, Any], description="Drawn before: the same record")}))
async def draw_release(release_id: ReleaseId,
                       draws: NamedDependency[Draws]) -> Response[dict[str, Any]]:
    """Draw a window or lottery release whose entries have closed (operators): 201 with the
    record when this call drew, 200 with the same record after. 409 `entries_open` before the
    close, `no_draw` for a first-come release."""
    drawn = await draws.draw(release_id)
    return Response(drawn.record, status_code=201 if drawn.created else 200)


@get("/v1/releases/{release_id:int}/draw", operation_id="getDraw", tags=["releases"],
     responses=documented(400, 404, 409, 503))
async def get_draw(release_id: ReleaseId, draws: NamedDependency[Draws]) -> dict[str, Any]:
    """The draw's record (public): digests, beacon, seed and where the files are; 409
    `not_drawn` before the draw. `booking verify-draw` re-checks it."""
    return await draws.record(release_id)


@get("/v1/releases/{release_id:int}/entries.jsonl", operation_id="getDrawEntries",
     tags=["releases"], media_type=JSONL, responses=documented(400, 404, 409, 503))
async def get_entries_file(release_id: ReleaseId, draws: NamedDependency[Draws]) -> bytes:
    """The frozen entries file, byte for byte as hashed (public, from the close; 409
    `entries_open` before)."""
    return await draws.entries_file(release_id)


@get("/v1/releases/{release_id:int}/results.jsonl", operation_id="getDrawResults",
     tags=["releases"], media_type=JSONL, responses=documented(400, 404, 409, 503))
async def get_results_file(release_id: ReleaseId, draws: NamedDependency[Draws]) -> bytes:
    """The results file, byte for byte as hashed (public; 409 `not_drawn` before the draw)."""
    return await draws.results_file(release_id)


HANDLERS: list[Any] = [draw_release, get_draw, get_entries_file, get_results_file]
