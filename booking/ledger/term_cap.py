"""The term cap as the ledger keeps it: no resident holds more active bookings in the courses of
a term's releases than the term's cap (`bookings_keep_term_cap` in schema.sql refuses any
INSERT that would pass it, whatever the gate said). This module turns that refusal into the
answer a resident gets: 409 `term_cap_reached`, with the term, its cap and what they hold.
"""

from __future__ import annotations

import asyncpg

from booking.core.errors import Conflict

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
    """The 409 for a resident the term cap refused a seat in `course_id`."""
    term = await pool.fetchrow(TERM_OF_COURSE, course_id)
    if term is None:  # the course left its release meanwhile: say what the ledger said
        return Conflict("You hold as many seats as this term allows.", code="term_cap_reached")
    held = [row[0] for row in await pool.fetch(HELD_IN_TERM, resident_id, term["term"])]
    return Conflict(f"You hold {len(held)} seat(s) in term {term['term']}, its cap is "
                    f"{term['term_cap']}: cancel one to take another.", code="term_cap_reached",
                    extra={"term": term["term"], "cap": term["term_cap"], "held": held})
