"""The seat gate: every seat decision is one Lua script on one course's keys.

All keys of a course share the hash tag `{<course id>}`, so each script touches a single slot
and the gate runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from redis.asyncio import Redis

from booking.core.batching import ShardedBatcher
from booking.core.observability import GRAB_BATCH_SIZE
from booking.seats.scripts import load_script, run_many, server_of, with_channel


def course_keys(course_id: int) -> tuple[str, str, str, str]:
    """Info hash (capacity, left, status, opens_at, hold_s), holders hash, pending zset,
    waiting zset (resident -> waitlist id)."""
    tag = f"course:{{{course_id}}}"
    return f"{tag}:info", f"{tag}:holders", f"{tag}:pending", f"{tag}:waiting"


class Outcome(StrEnum):
    """What a seat script decided (the first element of its reply)."""

    TAKEN = "taken"  # grab.lua took a seat for this resident (pending until written)
    HELD = "held"  # this resident already holds a seat of the course
    SOLD_OUT = "sold_out"
    NOT_OPEN = "not_open"
    CANCELLED = "course_cancelled"
    WAITING = "waiting"  # wait.lua put the resident in the waitlist
    SEATS_AVAILABLE = "seats_available"  # wait.lua: a seat is free, grab it instead
    MISSING = "missing"  # the gate has not loaded the course (Seats loads it and asks again)
    NO_COURSE = "no_course"  # Postgres has no such course either


@dataclass(frozen=True, slots=True)
class Decision:
    """A seat script's reply as a typed value."""

    outcome: Outcome
    booking_id: str | None = None  # HELD: the booking the resident holds
    opens_at_ms: int = 0  # NOT_OPEN: when sales open (ms since the epoch)
    hold_s: int = 0  # TAKEN: how long a hold of this (paid) course lasts; 0 for a free course


@dataclass(frozen=True, slots=True)
class CourseGateState:
    """What the ledger says about a course, as sync.lua needs it."""

    capacity: int
    status: str
    opens_at_ms: int
    bookings: Mapping[str, str]  # resident id -> active booking id
    hold_s: int = 0  # 0: a free course
    waiting: Mapping[str, int] = field(default_factory=dict)  # resident id -> waitlist id


@dataclass(frozen=True, slots=True)
class Promotion:
    """A waiting resident who now holds a seat (pending until their booking is written)."""

    course_id: int
    resident_id: str
    booking_id: str
    waitlist_id: int


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """What a sync saw in the gate before it read the ledger (see sync.lua)."""

    settled: Mapping[str, str]  # holders not pending: resident id -> booking id
    version: int  # the gate's version of the course (0: the gate does not have it)


@dataclass(frozen=True, slots=True)
class SyncResult:
    seats_left: int  # -1: the gate does not have the course (a sync that changed nothing)
    given_back: int
    restored: int
    applied: bool = True  # False: the gate changed since the snapshot; nothing was written


# Takes a resident out of a course's queue (they left it in Postgres) and, if they were in it,
# moves the course's version on, so that a sync that read Postgres before they left does not
# put them back (see sync.lua). The last waiter leaving a course with a seat free opens that seat
# to racers: announced like every such change (see memory.py).
# KEYS: course info hash, waiting zset; ARGV: resident id.
_LEAVE_QUEUE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  if redis.call('ZCARD', KEYS[2]) == 0
      and tonumber(redis.call('HGET', KEYS[1], 'left') or '0') > 0 then
    redis.call('PUBLISH', 'booking:course-changed', string.match(KEYS[1], '{(.-)}'))
  end
end
return 1
"""
# Whether a course holds a pending mark older than ARGV[1] ms by Redis's clock, the clock that
# stamped the mark. KEYS: the course's pending zset.
_HAS_STALE_PENDING = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now_ms - tonumber(ARGV[1])),
                   'LIMIT', 0, 1)
"""

# A course's figures as the gate has them, read-only, for comparing with the ledger in bulk: info
# (capacity, status, opens_at, left, hold_s; false where missing), then how many holders, pending
# marks, pending marks older than ARGV[1] ms by Redis's clock (the one that stamped them), waiters.
# KEYS: the course's keys (course_keys).
_FIGURES = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local info = redis.call('HMGET', KEYS[1], 'capacity', 'status', 'opens_at', 'left', 'hold_s')
return {info[1], info[2], info[3], info[4], info[5], redis.call('HLEN', KEYS[2]),
        redis.call('ZCARD', KEYS[3]),
        redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. (now_ms - tonumber(ARGV[1]))),
        redis.call('ZCARD', KEYS[4])}
"""


@dataclass(frozen=True, slots=True)
class GateFigures:
    """What the gate holds of a course, in counts (see `SeatGate.figures`)."""

    capacity: int | None  # None: the gate does not have the course
    status: str | None
    opens_at_ms: int | None
    left: int | None
    hold_s: int | None
    holders: int
    pending: int  # holders being written (a grab, a promotion) or leaving (a cancel)
    stale_pending: int  # pending marks older than the pending timeout: their writer died
    waiting: int


class SeatGate:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._grab = load_script(redis, "booking.seats", "grab")
        self._free = load_script(redis, "booking.seats", "free")
        self._unpromote = load_script(redis, "booking.seats", "unpromote")
        self._wait = load_script(redis, "booking.seats", "wait")
        self._leaving = load_script(redis, "booking.seats", "leaving")
        self._sync = load_script(redis, "booking.seats", "sync")
        self._settle = load_script(redis, "booking.seats", "settle")
        self._leave_queue = redis.register_script(with_channel(redis, _LEAVE_QUEUE))
        self._has_stale_pending = redis.register_script(_HAS_STALE_PENDING)
        self._figures = redis.register_script(_FIGURES)
        self._grabs: ShardedBatcher[tuple[int, str, str], Decision] = ShardedBatcher(
            self._grab_many, lambda grab: server_of(redis, course_keys(grab[0])[0]),
            flushers=1, max_batch=512)

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
        return [reply if isinstance(reply, Exception) else _decision(reply) for reply in replies]

    async def mark_leaving(self, course_id: int, resident_id: str, booking_id: str) -> bool:
        """Mark a seat pending before its cancel is written (see leaving.lua)."""
        marked = await self._leaving(keys=course_keys(course_id), args=[resident_id, booking_id])
        return bool(marked)

    async def free(self, course_id: int, resident_id: str = "", booking_id: str = "",
                   promotions: int = 1) -> tuple[bool, list[Promotion]]:
        """Free the seat of that booking (if it holds one) and hand up to `promotions` free
        seats to the first residents waiting, in one step. The promotions must be written."""
        fresh = [str(uuid.uuid4()) for _ in range(promotions)]
        reply = await self._free(keys=course_keys(course_id),
                                 args=[resident_id, booking_id, *fresh])
        promoted = [Promotion(course_id, reply[i], reply[i + 1], int(reply[i + 2]))
                    for i in range(1, len(reply), 3)]
        return bool(reply[0]), promoted

    async def unpromote(self, promotion: Promotion) -> bool:
        """Put a resident whose promotion could not be written back in their place."""
        undone = await self._unpromote(
            keys=course_keys(promotion.course_id),
            args=[promotion.resident_id, promotion.booking_id, promotion.waitlist_id])
        return bool(undone)

    async def wait(self, course_id: int, resident_id: str, waitlist_id: int) -> Decision:
        """Join the waitlist of a sold-out course (see wait.lua)."""
        reply = await self._wait(keys=course_keys(course_id), args=[resident_id, waitlist_id])
        return _decision(reply)

    async def leave_waitlist(self, course_id: int, resident_id: str) -> None:
        """Take a resident who left the waitlist (in Postgres) out of the gate's queue."""
        info, _, _, waiting = course_keys(course_id)
        await self._leave_queue(keys=[info, waiting], args=[resident_id])

    async def settle(self, committed: Iterable[tuple[int, str, str]]) -> None:
        """Clear the pending marks of grabs whose rows are committed, (course id, resident id,
        booking id) each: one run of settle.lua per course, all in one pipeline. A mark goes
        only while its resident holds the seat under that booking."""
        by_course: dict[int, list[str]] = {}
        for course_id, resident_id, booking_id in committed:
            by_course.setdefault(course_id, []).extend((resident_id, booking_id))
        if not by_course:
            return
        replies = await run_many(self.redis, self._settle, [
            (course_keys(course_id)[1:3], pairs) for course_id, pairs in by_course.items()])
        failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if failed is not None:
            raise failed

    async def snapshot(self, course_id: int) -> GateSnapshot:
        """What a sync must see before it reads the ledger: the holders not pending right
        now, and the course's version."""
        info_key, holders_key, pending_key, _ = course_keys(course_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(holders_key)
            pipe.zrange(pending_key, 0, -1)
            pipe.hget(info_key, "version")
            holders, pending, version = await pipe.execute()
        pending_set = set(pending)
        settled = {res: bid for res, bid in holders.items() if res not in pending_set}
        return GateSnapshot(settled, int(version or 0))

    async def sync(self, course_id: int, ledger: CourseGateState, seen: GateSnapshot,
                   pending_timeout_ms: int) -> SyncResult:
        """Make the gate agree with `ledger`, read after `seen` was taken; nothing changes (and
        `applied` is False) when the course's version moved on since `seen`."""
        args: list[object] = [ledger.capacity, ledger.status, ledger.opens_at_ms,
                              pending_timeout_ms, ledger.hold_s, seen.version]
        for mapping in (ledger.bookings, seen.settled, ledger.waiting):
            args.append(len(mapping))
            for resident_id, value in mapping.items():
                args += (resident_id, value)
        left, given_back, restored, applied = await self._sync(keys=course_keys(course_id),
                                                               args=args)
        return SyncResult(int(left), int(given_back), int(restored), bool(applied))

    async def seats_left(self, course_ids: Sequence[int]) -> list[int | None]:
        """Live seats left per course; None where the gate has not loaded the course."""
        if not course_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for course_id in course_ids:
                pipe.hget(course_keys(course_id)[0], "left")
            replies = await pipe.execute()
        return [None if reply is None else max(int(reply), 0) for reply in replies]

    async def courses_to_promote(self, course_ids: Sequence[int]) -> list[int]:
        """Courses with a free seat and someone waiting (a promotion pass is due)."""
        if not course_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for course_id in course_ids:
                info, _, _, waiting = course_keys(course_id)
                pipe.hget(info, "left")
                pipe.zcard(waiting)
            replies = await pipe.execute()
        return [cid for i, cid in enumerate(course_ids)
                if replies[2 * i] is not None and int(replies[2 * i]) > 0 and replies[2 * i + 1]]

    async def courses_with_stale_pending(self, course_ids: Sequence[int],
                                         pending_timeout_ms: int) -> list[int]:
        """Courses holding a pending mark older than `pending_timeout_ms` by Redis's clock (the
        one that stamped it), one script per course in one pipeline."""
        if not course_ids:
            return []
        replies = await run_many(self.redis, self._has_stale_pending, [
            ((course_keys(course_id)[2],), (pending_timeout_ms,)) for course_id in course_ids])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [cid for cid, reply in zip(course_ids, replies, strict=True) if reply]

    async def figures(self, course_ids: Sequence[int],
                      pending_timeout_ms: int) -> list[GateFigures]:
        """Each course's figures as the gate has them, one read-only script per course in one
        pipeline: what a full reconciler round compares with the ledger's figures."""
        if not course_ids:
            return []
        replies = await run_many(self.redis, self._figures, [
            (course_keys(course_id), (pending_timeout_ms,)) for course_id in course_ids])
        return [_figures(reply) for reply in replies]


def _optional_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _figures(reply: object) -> GateFigures:
    if isinstance(reply, Exception):
        raise reply
    assert isinstance(reply, list)
    capacity, status, opens_at, left, hold_s, holders, pending, stale, waiting = reply
    return GateFigures(_optional_int(capacity), status, _optional_int(opens_at),
                       _optional_int(left), _optional_int(hold_s), int(holders), int(pending),
                       int(stale), int(waiting))


def _decision(reply: list[str]) -> Decision:
    outcome = Outcome(reply[0])
    if outcome is Outcome.TAKEN:
        return Decision(outcome, hold_s=int(reply[2]))
    if outcome is Outcome.HELD:
        return Decision(outcome, booking_id=reply[1])
    if outcome is Outcome.NOT_OPEN:
        return Decision(outcome, opens_at_ms=int(reply[1]))
    return Decision(outcome)
