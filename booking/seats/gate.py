"""The seat gate: every seat decision is one Lua script on one course's keys.

All keys of a course share the hash tag `{<course id>}`, so each script touches a single slot
and the gate runs unchanged on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from booking.batching import MicroBatcher
from booking.observability import GRAB_BATCH_SIZE
from booking.scripts import load_script, run_many


def course_keys(course_id: int) -> tuple[str, str, str]:
    """Info hash (capacity, left, status, opens_at), holders hash, pending zset."""
    tag = f"course:{{{course_id}}}"
    return f"{tag}:info", f"{tag}:holders", f"{tag}:pending"


@dataclass(frozen=True, slots=True)
class Decision:
    """What grab.lua said: `outcome` is taken, held, sold_out, not_open, course_cancelled or
    missing; `value` is seats left (taken), the booking id (held) or opens_at ms (not_open)."""

    outcome: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class CourseGateState:
    """What the ledger says about a course, as sync.lua needs it."""

    capacity: int
    status: str
    opens_at_ms: int
    bookings: Mapping[str, str]  # resident id -> active booking id


@dataclass(frozen=True, slots=True)
class SyncResult:
    seats_left: int
    given_back: int
    restored: int


class SeatGate:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._grab = load_script(redis, "booking.seats", "grab")
        self._release = load_script(redis, "booking.seats", "release")
        self._leaving = load_script(redis, "booking.seats", "leaving")
        self._sync = load_script(redis, "booking.seats", "sync")
        self._grabs: MicroBatcher[tuple[int, str, str], Decision] = MicroBatcher(
            self._grab_many, flushers=1, max_batch=512)

    async def close(self) -> None:
        await self._grabs.close()

    async def grab(self, course_id: int, resident_id: str, booking_id: str) -> Decision:
        """One run of grab.lua. Concurrent grabs of a process travel in one pipeline (each
        still its own atomic script), which costs a fraction of a round trip each."""
        return await self._grabs.submit((course_id, resident_id, booking_id))

    async def _grab_many(self, grabs: list[tuple[int, str, str]]) -> list[Decision | Exception]:
        GRAB_BATCH_SIZE.observe(len(grabs))
        replies = await run_many(self.redis, self._grab, [
            (course_keys(course_id), (resident_id, booking_id))
            for course_id, resident_id, booking_id in grabs])
        return [reply if isinstance(reply, Exception) else Decision(*reply)  # type: ignore[misc]
                for reply in replies]

    async def mark_leaving(self, course_id: int, resident_id: str, booking_id: str) -> bool:
        """Mark a seat pending before its cancel is written (see leaving.lua)."""
        marked = await self._leaving(keys=course_keys(course_id), args=[resident_id, booking_id])
        return bool(marked)

    async def release(self, course_id: int, resident_id: str, booking_id: str) -> bool:
        """Give a seat back; False when that booking held no seat (already given back)."""
        freed = await self._release(keys=course_keys(course_id), args=[resident_id, booking_id])
        return bool(freed)

    async def settle(self, committed: Iterable[tuple[int, str]]) -> None:
        """Clear the pending marks of grabs whose rows are committed, one pipeline for all."""
        by_course: dict[int, list[str]] = {}
        for course_id, resident_id in committed:
            by_course.setdefault(course_id, []).append(resident_id)
        if not by_course:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for course_id, residents in by_course.items():
                pipe.zrem(course_keys(course_id)[2], *residents)
            await pipe.execute()

    async def settled_holders(self, course_id: int) -> dict[str, str]:
        """Holders not pending right now: taken before sync reads the ledger."""
        _, holders_key, pending_key = course_keys(course_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(holders_key)
            pipe.zrange(pending_key, 0, -1)
            holders, pending = await pipe.execute()
        pending_set = set(pending)
        return {res: bid for res, bid in holders.items() if res not in pending_set}

    async def sync(self, course_id: int, ledger: CourseGateState, settled: Mapping[str, str],
                   stale_before_ms: int) -> SyncResult:
        args: list[object] = [ledger.capacity, ledger.status, ledger.opens_at_ms, stale_before_ms]
        args.append(len(ledger.bookings))
        for resident_id, booking_id in ledger.bookings.items():
            args += (resident_id, booking_id)
        args.append(len(settled))
        for resident_id, booking_id in settled.items():
            args += (resident_id, booking_id)
        left, given_back, restored = await self._sync(keys=course_keys(course_id), args=args)
        return SyncResult(int(left), int(given_back), int(restored))

    async def seats_left(self, course_ids: Sequence[int]) -> list[int | None]:
        """Live seats left per course; None where the gate has not loaded the course."""
        if not course_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for course_id in course_ids:
                pipe.hget(course_keys(course_id)[0], "left")
            replies = await pipe.execute()
        return [None if reply is None else max(int(reply), 0) for reply in replies]

    async def courses_with_stale_pending(self, course_ids: Sequence[int],
                                         stale_before_ms: int) -> list[int]:
        """Courses holding a pending mark older than `stale_before_ms`."""
        if not course_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for course_id in course_ids:
                pipe.zrangebyscore(course_keys(course_id)[2], "-inf", f"({stale_before_ms}",
                                   start=0, num=1)
            replies = await pipe.execute()
        return [cid for cid, reply in zip(course_ids, replies, strict=True) if reply]
