"""The term cap at the gate: a resident's quota of seats per term, taken before the seat.

Postgres refuses any booking past a term's cap (booking/ledger/term_cap.py); this quota answers
before a seat is even taken, so a resident at the cap neither holds a seat for a moment (which
a racer would see as sold out) nor sends a write that must fail. One hash per resident, in the
resident's own slot (so the scripts never cross slots): course id -> state and term. A take is
pending until the booking is written (`settle`), and lapses by itself if its taker never comes
back (a crashed process); a refused seat or a failed write gives it back (`give_back`), and so
does every freed seat (`SeatGate.free` callers: cancel, expiry, swap). It may count too few (a
promotion does not take it, a flush loses it): Postgres still refuses, and a `rebuild` from
Postgres puts it right. It never refuses on its own word: a caller checks a refusal against
Postgres first (booking/bookings.py); what it then still counts beyond Postgres are the
resident's own grabs in flight, which count toward the cap until they are decided.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from booking.core.batching import ShardedBatcher
from booking.core.stores import RedisClient
from booking.seats.scripts import Call, load_script, run_many, server_of


def quota_key(resident_id: str) -> str:
    return f"quota:{{r:{resident_id}}}"


@dataclass(frozen=True, slots=True)
class Taken:
    ok: bool  # False: the cap is reached
    new: bool = False  # True: taken by this call (give it back if no booking follows)
    held: list[int] = field(default_factory=list)  # when refused: the courses counted


class TermQuota:
    """Takes and their ends: concurrent calls of a process travel in one pipeline each way
    (every script still atomic on its own key), as the seat gate's grabs do."""

    def __init__(self, redis: RedisClient, pending_s: float) -> None:
        self._redis = redis
        self._pending_ms = int(pending_s * 1000)
        self._take = load_script(redis, "booking.seats", "quota_take")
        self._end = load_script(redis, "booking.seats", "quota_settle")
        self._rebuild = load_script(redis, "booking.seats", "quota_rebuild")
        self._takes: ShardedBatcher[Call, Any] = ShardedBatcher(
            self._run_takes, self._server_of, flushers=1, max_batch=512)
        self._ends: ShardedBatcher[Call, Any] = ShardedBatcher(
            self._run_ends, self._server_of, flushers=1, max_batch=512)

    def _server_of(self, call: Call) -> str:
        return server_of(self._redis, call[0][0])

    async def close(self) -> None:
        await self._takes.close()
        await self._ends.close()

    async def take(self, resident_id: str, course_id: int, term: str, cap: int,
                   instead_of: int | None = None) -> Taken:
        """Count `course_id` in the resident's seats of `term` unless `cap` are counted
        already (not counting `instead_of`, the course a swap leaves)."""
        reply = await self._takes.submit(([quota_key(resident_id)], [
            course_id, term, cap, int(time.time() * 1000), self._pending_ms,
            "" if instead_of is None else instead_of]))
        if int(reply[0]):
            return Taken(True, bool(int(reply[1])))
        return Taken(False, held=sorted(int(c) for c in reply[1:]))

    async def settle(self, resident_id: str, course_id: int) -> None:
        """A booking holds the seat the take was for."""
        await self._ends.submit(([quota_key(resident_id)], [course_id, "settle"]))

    async def give_back(self, resident_id: str, course_id: int) -> None:
        """No booking followed the take."""
        await self._ends.submit(([quota_key(resident_id)], [course_id, "drop"]))

    async def _run_takes(self, calls: list[Call]) -> list[Any]:
        return await run_many(self._redis, self._take, calls)

    async def _run_ends(self, calls: list[Call]) -> list[Any]:
        return await run_many(self._redis, self._end, calls)

    async def rebuild(self, resident_id: str, held: Iterable[tuple[int, str]]) -> None:
        """The resident's quota as Postgres has it: (course, term) of each active booking in
        a capped term; takes still in flight stay (they count until settled or given back)."""
        args: list[object] = [int(time.time() * 1000)]
        for course, term in held:
            args += [course, term]
        await self._rebuild(keys=[quota_key(resident_id)], args=args)

    async def in_flight(self, resident_id: str, term: str) -> list[int]:
        """Courses of `term` whose take is pending (a grab of this resident being decided)."""
        now = int(time.time() * 1000)
        fields = await self._redis.hgetall(quota_key(resident_id))
        pending = []
        for course, value in fields.items():
            state, _, its_term = _text(value).partition("|")
            if its_term == term and state != "h" and int(state) > now:
                pending.append(int(course))
        return sorted(pending)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
