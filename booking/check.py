"""The invariant checker: after any run, prove from Postgres and Redis that nothing went wrong.

Checks every invariant of DESIGN.md: no course over capacity, no duplicate active booking,
the gate agreeing with the ledger (seats left and holders), no grab left pending, and every
booking a client was told about present in Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from booking.seats import course_keys

COURSE_COUNTS = """
SELECT c.id, c.capacity, c.status, c.active_bookings,
       count(b.id) FILTER (WHERE b.status IN ('confirmed', 'held')) AS active
FROM courses c LEFT JOIN bookings b ON b.course_id = c.id
GROUP BY c.id ORDER BY c.id
"""
DUPLICATES = """
SELECT course_id, resident_id, count(*) AS n FROM bookings WHERE status IN ('confirmed', 'held')
GROUP BY course_id, resident_id HAVING count(*) > 1
"""
ACTIVE_HOLDERS = """
SELECT course_id, resident_id, id::text FROM bookings WHERE status IN ('confirmed', 'held')
"""
KNOWN_IDS = "SELECT id::text FROM bookings WHERE id = ANY($1::uuid[])"
MAX_LISTED = 10


@dataclass(slots=True)
class CheckReport:
    courses: int = 0
    active_bookings: int = 0
    received: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [f"Checked {self.courses} courses, {self.active_bookings} active bookings, "
                 f"{self.received} booking ids reported by clients."]
        lines += [f"  note: {note}" for note in self.notes]
        if self.ok:
            lines.append("OK: no oversell, no duplicates, gate agrees with ledger, "
                         "nothing lost.")
        else:
            lines += [f"  VIOLATION: {v}" for v in self.violations[:50]]
            lines.append(f"FAILED: {len(self.violations)} violation(s).")
        return "\n".join(lines)


def read_received(paths: Iterable[Path]) -> set[str]:
    """Booking ids from files (one per line) or directories of such *.txt files."""
    ids: set[str] = set()
    for path in paths:
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        for file in files:
            ids.update(line.strip() for line in file.read_text().splitlines() if line.strip())
    return ids


async def check_invariants(pool: asyncpg.Pool, redis: Redis,
                           received: set[str] | None = None) -> CheckReport:
    report = CheckReport()
    courses = await pool.fetch(COURSE_COUNTS)
    report.courses = len(courses)
    report.active_bookings = sum(row["active"] for row in courses)
    _check_capacity(report, courses)
    for row in await pool.fetch(DUPLICATES):
        report.violations.append(f"resident {row['resident_id']} holds {row['n']} active "
                                 f"bookings of course {row['course_id']}")
    holders: dict[int, dict[str, str]] = {row["id"]: {} for row in courses}
    for row in await pool.fetch(ACTIVE_HOLDERS):
        holders[row["course_id"]][row["resident_id"]] = row["id"]
    await _check_gate(report, redis, courses, holders)
    if received is not None:
        await _check_received(report, pool, received)
    return report


def _check_capacity(report: CheckReport, courses: list[asyncpg.Record]) -> None:
    for row in courses:
        if row["active"] > row["capacity"]:
            report.violations.append(f"course {row['id']} oversold: {row['active']} active "
                                     f"bookings for {row['capacity']} seats")
        if row["active"] != row["active_bookings"]:
            report.violations.append(f"course {row['id']} counts {row['active_bookings']} "
                                     f"active bookings but has {row['active']}")


async def _check_gate(report: CheckReport, redis: Redis, courses: list[asyncpg.Record],
                      holders: dict[int, dict[str, str]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for row in courses:
            info, holders_key, pending_key, _ = course_keys(row["id"])
            pipe.hget(info, "left")
            pipe.hgetall(holders_key)
            pipe.zcard(pending_key)
        replies = await pipe.execute()
    not_loaded = 0
    for i, row in enumerate(courses):
        left, gate_holders, pending = replies[3 * i: 3 * i + 3]
        if left is None:
            not_loaded += 1  # the gate loads it from Postgres on first use
            continue
        expected = row["capacity"] - row["active"]
        if int(left) != expected:
            report.violations.append(f"course {row['id']}: gate says {left} seats left, "
                                     f"ledger says {expected}")
        if gate_holders != holders[row["id"]]:
            extra = len(set(gate_holders.items()) - set(holders[row["id"]].items()))
            missing = len(set(holders[row["id"]].items()) - set(gate_holders.items()))
            report.violations.append(f"course {row['id']}: gate holders differ from ledger "
                                     f"({extra} extra, {missing} missing)")
        if pending:
            report.violations.append(f"course {row['id']}: {pending} grab(s) still pending")
    if not_loaded:
        report.notes.append(f"{not_loaded} course(s) not loaded in the gate yet")


async def _check_received(report: CheckReport, pool: asyncpg.Pool, received: set[str]) -> None:
    report.received = len(received)
    found: set[str] = set()
    ids = sorted(received)
    for start in range(0, len(ids), 10_000):
        chunk = ids[start:start + 10_000]
        try:
            rows = await pool.fetch(KNOWN_IDS, chunk)
        except (asyncpg.DataError, ValueError):
            report.violations.append("the received ids contain something that is not a uuid")
            return
        found.update(row[0] for row in rows)
    lost = sorted(received - found)
    if lost:
        shown = ", ".join(lost[:MAX_LISTED])
        report.violations.append(f"{len(lost)} booking(s) a client was told about are not in "
                                 f"Postgres: {shown}")
