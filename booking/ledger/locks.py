"""The one order in which transactions lock course rows.

The counting trigger updates the course row of every booking a statement changes, and a course
cancellation locks its course row before its bookings and places. A transaction that changes
bookings or places takes the course rows it will touch first, in id order, with the lock the
trigger's UPDATE takes: then no two transactions ever hold one course each while waiting for
the other's (a swap A->B beside one B->A), nor a booking or a place while waiting for the course
a cancellation holds.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

LOCK_COURSES = """
SELECT id FROM courses WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
"""


async def lock_courses(conn: asyncpg.Connection, course_ids: Iterable[int]) -> None:
    """Lock these course rows in id order; call it first in the caller's transaction."""
    await conn.execute(LOCK_COURSES, sorted(set(course_ids)))
