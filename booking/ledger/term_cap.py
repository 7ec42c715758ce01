"""The term cap as the ledger keeps it: no resident holds more active bookings in the courses of
a term's releases than the term's cap (`bookings_keep_term_cap` in schema.sql refuses any
INSERT that would pass it, whatever the gate said). This module turns that refusal into the
answer a resident gets: 409 `term_cap_reached`, with the term, its cap and what they hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from booking.core.errors import Conflict
from booking.core.readcache import ReadCache

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


RULES_OF_COURSE = """
SELECT r.term, r.term_cap, r.mode, r.opens_at, r.tiers
FROM courses c JOIN releases r ON r.id = c.release_id WHERE c.id = $1
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


class TermCaps:
    """The release rules of courses, remembered for a second per process (a course joins a
    release once, before its release opens; until this process knows, Postgres still refuses
    past the cap)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.reads = ReadCache()

    async def of_course(self, course_id: int) -> CourseRules | None:
        """None for a course in no release."""
        return await self.reads.get(("release-rules", course_id), lambda: self._load(course_id))

    async def _load(self, course_id: int) -> CourseRules | None:
        row = await self.pool.fetchrow(RULES_OF_COURSE, course_id)
        return None if row is None else _rules(row)

    async def held(self, resident_id: str, term: str) -> list[int]:
        """The courses of `term` in which the resident holds a seat, as Postgres has it."""
        return [row[0] for row in await self.pool.fetch(HELD_IN_TERM, resident_id, term)]

    async def held_capped(self, resident_id: str) -> list[tuple[int, str]]:
        """(course, term) of every seat the resident holds in a capped term."""
        return [(row[0], row[1]) for row in await self.pool.fetch(HELD_CAPPED, resident_id)]


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
