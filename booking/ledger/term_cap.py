"""The term cap as the ledger keeps it: no resident holds more active bookings in the courses of
a term's releases than the term's cap (`bookings_keep_term_cap` in schema.sql refuses any
INSERT that would pass it, whatever the gate said). This module turns that refusal into the
answer a resident gets: 409 `term_cap_reached`, with the term, its cap and what they hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from booking.core.errors import Conflict

log = logging.getLogger("booking.ledger.term_cap")

CONSTRAINT = "bookings_term_cap"
TERM_OF_COURSE = """
SELECT r.term, r.term_cap FROM courses c JOIN releases r ON r.id = c.release_id WHERE c.id = $1
"""
HELD_IN_TERM = """
SELECT b.course_id FROM bookings b
JOIN courses c ON c.id = b.course_id JOIN releases r ON r.id = c.release_id
WHERE b.resident_id = $1 AND r.term = $2 AND booking_active(b.status)
ORDER BY b.course_id
"""


async def cap_reached(pool: asyncpg.Pool, course_id: int, resident_id: str) -> Conflict:
    """The 409 for a resident Postgres refused a seat in `course_id` past the term's cap."""
    term = await pool.fetchrow(TERM_OF_COURSE, course_id)
    if term is None:  # the course left its release meanwhile: say what the ledger said
        return Conflict("You hold as many seats as this term allows.", code="term_cap_reached")
    held = [row[0] for row in await pool.fetch(HELD_IN_TERM, resident_id, term["term"])]
    return cap_refusal(term["term"], term["term_cap"], held)


def cap_refusal(term: str, cap: int, held: list[int],
                in_flight: list[int] | None = None) -> Conflict:
    """409 `term_cap_reached`: the term, its cap, the courses held; `in_flight`: the courses of
    the resident's other grabs still being decided, which count meanwhile."""
    in_flight = [c for c in in_flight or [] if c not in held]
    detail = (f"You hold {len(held)} seat(s) in term {term}, its cap is {cap}: cancel one to "
              "take another.")
    extra: dict[str, object] = {"term": term, "cap": cap, "held": held}
    if in_flight:
        detail = (f"Your grabs of {len(in_flight)} other course(s) in term {term} are still "
                  f"being decided and count toward its cap of {cap} (you hold {len(held)} "
                  "seat(s)); try again once they are answered.")
        extra["in_flight"] = in_flight
    return Conflict(detail, code="term_cap_reached", extra=extra)


@dataclass(frozen=True, slots=True)
class CourseRules:
    """What a course's release adds to a grab of it: the term's cap, and the openings of the
    priority tiers of a first-come release."""

    term: str
    cap: int | None  # None: no cap in this term
    mode: str
    opens_at: datetime
    tier_openings: dict[str, datetime]

    def opens_for(self, tier: str | None) -> datetime:
        """When a first-come release opens for a member of `tier` (no tier, or one the release
        does not name: its opens_at)."""
        return self.tier_openings.get(tier or "", self.opens_at)


# The rules of every course in a release, one row per release: what a process's snapshot holds.
RULES_OF_RELEASED_COURSES = """
SELECT r.term, r.term_cap, r.mode, r.opens_at, r.tiers::text AS tiers,
       array_agg(c.id) AS course_ids
FROM releases r JOIN courses c ON c.release_id = r.id
GROUP BY r.id
"""
# Every active booking of a resident in a capped term: (course, term).
HELD_CAPPED = """
SELECT b.course_id, r.term FROM bookings b
JOIN courses c ON c.id = b.course_id JOIN releases r ON r.id = c.release_id
WHERE b.resident_id = $1 AND r.term_cap IS NOT NULL AND booking_active(b.status)
"""
ALL_HELD_CAPPED = """
SELECT b.resident_id, b.course_id, r.term FROM bookings b
JOIN courses c ON c.id = b.course_id JOIN releases r ON r.id = c.release_id
WHERE r.term_cap IS NOT NULL AND booking_active(b.status)
ORDER BY b.resident_id
"""


MAX_AGE_S = 1.0  # the bound: how old the rules a grab is decided on may be
MAX_ASKED = 100_000  # courses remembered as asked about before; past this, all are asked anew


@dataclass(frozen=True, slots=True)
class _Snapshot:
    rules: dict[int, CourseRules]  # course -> its release's rules; absent: in no release
    began: float  # time.monotonic() just before Postgres was asked for it


_NONE_YET = _Snapshot({}, -math.inf)
_LIVE: weakref.WeakSet[TermCaps] = weakref.WeakSet()


class TermCaps:
    """The release rules of courses, as one snapshot per process of every course in a release,
    read in one query (a course in no release is absent: no rules).

    The rules a grab is decided on are at most `max_age_s` old, and never older than the first
    time this process asked about that course: a course asked about for the first time waits for
    a snapshot read after it asked, so a course first grabbed after its release was created sees
    it in any process, as a per-course read would. The process that creates a release
    `forget`s the snapshot at once (see `release_rules_changed`); other processes learn within
    `max_age_s` about a course they had asked about before.

    One read at a time: callers needing a newer snapshot than the one being read share the next
    read. A snapshot past half its age is read again in the background, so the grabs of a busy
    process rarely wait for one."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = MAX_AGE_S) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self.reads = 0  # snapshots read so far (for tests and curiosity)
        self._snapshot = _NONE_YET
        self._asked_at: dict[int, float] = {}  # course -> when this process first asked
        self._forgotten_at = -math.inf
        self._running: asyncio.Future[_Snapshot] | None = None
        self._running_began = -math.inf
        self._queued: asyncio.Future[_Snapshot] | None = None
        _LIVE.add(self)

    async def of_course(self, course_id: int) -> CourseRules | None:
        """None for a course in no release."""
        now = time.monotonic()
        if len(self._asked_at) >= MAX_ASKED:
            self._asked_at.clear()
        asked_at = self._asked_at.setdefault(course_id, now)
        snapshot = self._snapshot
        if now - snapshot.began > self.max_age_s / 2 and self._running is None:
            self._refresh_in_background()
        # Fresh enough: read after the course was first asked about, after the last forget,
        # and less than max_age_s ago.
        bound = max(asked_at, self._forgotten_at, now - self.max_age_s)
        if snapshot.began <= bound:
            snapshot = await self._read_after(bound)
        return snapshot.rules.get(course_id)

    def forget(self) -> None:
        """Rules changed (this process created a release): the next grab waits for a snapshot
        read from now on."""
        self._forgotten_at = time.monotonic()

    async def _read_after(self, bound: float) -> _Snapshot:
        """A snapshot whose read began after `bound` (at most now): the one being read if it
        began late enough, else the next one, shared by everyone who asks meanwhile."""
        if self._running is None:
            self._start_read()
        elif self._running_began <= bound:
            if self._queued is None:
                self._queued = asyncio.ensure_future(self._read(after=self._running))
            return await asyncio.shield(self._queued)
        return await asyncio.shield(self._running)

    def _start_read(self) -> asyncio.Future[_Snapshot]:
        self._running = asyncio.ensure_future(self._read())
        self._running_began = math.inf  # not begun: it will, after anyone asking now
        return self._running

    def _refresh_in_background(self) -> None:
        self._start_read().add_done_callback(_log_failure)

    async def _read(self, after: asyncio.Future[_Snapshot] | None = None) -> _Snapshot:
        """Read the snapshot (once the read `after`, if given, is over: it hands over to this
        one) and keep it unless a newer one was kept meanwhile."""
        if after is not None:
            await asyncio.wait([after])  # its outcome is for its own callers
        me = self._running
        began = self._running_began = time.monotonic()
        try:
            rules: dict[int, CourseRules] = {}
            for row in await self.pool.fetch(RULES_OF_RELEASED_COURSES):
                rules.update(dict.fromkeys(row["course_ids"], _rules(row)))
        finally:
            if self._running is me:  # the queued read, if any, is the one running from now on
                self._running, self._queued = self._queued, None
                self._running_began = -math.inf if self._running is None else math.inf
        self.reads += 1
        snapshot = _Snapshot(rules, began)
        if began > self._snapshot.began:
            self._snapshot = snapshot
        return snapshot

    async def held(self, resident_id: str, term: str) -> list[int]:
        """The courses of `term` in which the resident holds a seat, as Postgres has it."""
        return [row[0] for row in await self.pool.fetch(HELD_IN_TERM, resident_id, term)]

    async def held_capped(self, resident_id: str) -> list[tuple[int, str]]:
        """(course, term) of every seat the resident holds in a capped term."""
        return [(row[0], row[1]) for row in await self.pool.fetch(HELD_CAPPED, resident_id)]


def release_rules_changed(pool: asyncpg.Pool) -> None:
    """Call after committing a release: every TermCaps of this process on `pool` forgets its
    snapshot, so the next grab here is decided on rules read after the release."""
    for caps in list(_LIVE):
        if caps.pool is pool:
            caps.forget()


def _log_failure(read: asyncio.Future[_Snapshot]) -> None:
    if not read.cancelled() and read.exception() is not None:
        log.warning("reading the release rules failed: %s", read.exception())


def _rules(row: asyncpg.Record) -> CourseRules:
    tiers = {tier["name"]: datetime.fromisoformat(tier["opens_at"])
             for tier in json.loads(row["tiers"])}
    return CourseRules(row["term"], row["term_cap"], row["mode"], row["opens_at"], tiers)


async def all_held_capped(pool: asyncpg.Pool) -> dict[str, list[tuple[int, str]]]:
    """Every resident's seats in capped terms: what the gate's quotas are rebuilt from."""
    held: dict[str, list[tuple[int, str]]] = {}
    for row in await pool.fetch(ALL_HELD_CAPPED):
        held.setdefault(row["resident_id"], []).append((row["course_id"], row["term"]))
    return held
