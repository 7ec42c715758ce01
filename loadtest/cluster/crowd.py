"""Who talks to the stack during a rehearsal:

- the rush: wrk through HAProxy driving `booking bench`'s own script (booking/ops/bench_rush.lua:
  a token and an address per resident, the hottest tenth first, the next choice on sold_out);
- the probes: one lane per Redis primary, each grabbing a roomy course of its own shard with a
  new resident every few tens of ms, through HAProxy, every answer timed: the clock the faults
  are measured against, whatever the rush is doing;
- a resident watching a course's live seats (SSE) through one app while others grab it through
  another; the same stream through HAProxy;
- a check that HAProxy passes the client's address: one address past its rate limit is told
  429, another is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from booking.core.auth import mint
from booking.ops import bench
from booking.ops.bench import CHOICES, HOT_SHARE
from booking.ops.check import read_received
from booking.ops.rehearsal import Release, address_of
from loadtest.cluster.plan import Plan

PROBE_TIMEOUT_S = 10.0
MAX_PROBES_IN_FLIGHT = 20  # per lane: a lane never piles up behind a stuck shard
LIVE_WAIT_S = 5.0


# ---------------------------------------------------------------------------------- the rush

@dataclass(slots=True)
class WrkRush:
    """What wrk did: how long it ran, whether every resident was done, answers by status (and
    code, e.g. `409:sold_out`), residents started, and booking ids received."""

    seconds: float = 0.0
    all_done: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    started: int = 0
    received: set[str] = field(default_factory=set)
    summary: dict[str, object] = field(default_factory=dict)  # wrk's own (latency, errors)


def mint_tokens(secret: str, residents: int, path: Path) -> Path:
    """One resident token a line, as `booking bench` makes them."""
    path.write_text("\n".join(mint(secret, "resident", f"cluster-{n}")
                              for n in range(residents)) + "\n")
    return path


def run_wrk(base_url: str, release: Release, plan: Plan, tokens: Path, work: Path) -> WrkRush:
    """`booking bench`'s own rush (bench_rush.lua) until every thread is done or `plan.rush_s`
    has passed."""
    env = {"BENCH_TOKENS": str(tokens), "BENCH_COURSES": ",".join(map(str, release.course_ids)),
           "BENCH_HOT": str(len(release.hot)), "BENCH_HOT_SHARE": str(HOT_SHARE),
           "BENCH_CHOICES": str(CHOICES), "BENCH_THREADS": str(plan.threads),
           "BENCH_OUT": str(work / "wrk"), "BENCH_FLOOD": "0"}
    ran = bench.run_wrk(base_url, {**os.environ, **env}, work, threads=plan.threads,
                        connections=plan.connections, seconds=plan.rush_s)
    counts, started = bench.read_counts(work, plan.threads)
    summary = next((json.loads(line.removeprefix("BENCH_WRK "))
                    for line in ran.output.splitlines() if line.startswith("BENCH_WRK ")), {})
    return WrkRush(ran.seconds, not ran.cut_short, counts, started,
                   read_received(work.glob("wrk-*-ids.txt")), summary)


# ---------------------------------------------------------------------------------- the probes

@dataclass(frozen=True, slots=True)
class Probe:
    """One probe grab: which lane (the port of the primary its course was on at the start),
    when it was sent and answered (epoch seconds), the status (0: no HTTP answer), the code."""

    lane: int
    sent: float
    ended: float
    status: int
    code: str

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass(slots=True)
class Probes:
    """Every probe answer, and the booking ids they were given."""

    answers: list[Probe] = field(default_factory=list)
    received: set[str] = field(default_factory=set)

    async def booked(self, lane: int, after: float, timeout_s: float) -> float | None:
        """When (epoch) a probe of `lane` sent after `after` was first booked; None if none
        was within `timeout_s`."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            at = min((p.ended for p in self.answers if p.lane == lane and p.sent >= after
                      and p.status in (200, 201)), default=None)
            if at is not None:
                return at
            await asyncio.sleep(0.05)
        return None


async def probe_lanes(base_url: str, secret: str, lanes: dict[int, int], every_s: float,
                      stop: asyncio.Event, probes: Probes) -> None:
    """Each lane (primary port -> course id) grabs its course with a new resident every
    `every_s` until `stop`; every answer goes to `probes` as it comes."""
    limits = httpx.Limits(max_connections=len(lanes) * MAX_PROBES_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base_url, timeout=PROBE_TIMEOUT_S,
                                 limits=limits) as http:
        await asyncio.gather(*(_lane(http, secret, port, course_id, every_s, stop, probes)
                               for port, course_id in lanes.items()))


async def _lane(http: httpx.AsyncClient, secret: str, port: int, course_id: int,
                every_s: float, stop: asyncio.Event, probes: Probes) -> None:
    in_flight = asyncio.Semaphore(MAX_PROBES_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    n = 0
    while not stop.is_set():
        await in_flight.acquire()
        who = f"probe-{port}-{n}"
        n += 1
        task = asyncio.create_task(_probe(http, secret, port, course_id, who, probes))
        task.add_done_callback(lambda _: in_flight.release())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    if tasks:
        await asyncio.wait(tasks)


async def _probe(http: httpx.AsyncClient, secret: str, lane: int, course_id: int, who: str,
                 probes: Probes) -> None:
    sent = time.time()
    status, code = 0, ""
    try:
        answer = await http.post(f"/v1/courses/{course_id}/bookings",
                                 headers=_resident_headers(secret, who))
        status = answer.status_code
        body = _json(answer)
        code = str(body.get("code") or body.get("status") or "")
        if status in (200, 201) and isinstance(body.get("id"), str):
            probes.received.add(body["id"])
    except httpx.HTTPError as exc:
        code = type(exc).__name__
    probes.answers.append(Probe(lane, sent, time.time(), status, code))


def _resident_headers(secret: str, who: str, address: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(secret, 'resident', who)}",
            "X-Forwarded-For": address or address_of(who)}


def _json(answer: httpx.Response) -> dict[str, object]:
    with contextlib.suppress(ValueError):
        body = answer.json()
        if isinstance(body, dict):
            return body
    return {}


# ---------------------------------------------------------------------------------- live seats

@dataclass(slots=True)
class LiveSeen:
    """A stream on one app (and one through HAProxy) while `grabs` grabs went through another:
    seats left in the snapshot and in the last event, and how long after the last grab's answer
    the stream showed them all (None: it did not within LIVE_WAIT_S)."""

    watched_on: str
    grabbed_on: str
    course_id: int
    grabs: int = 0
    snapshot: int | None = None
    last_seen: int | None = None
    shown_after_s: float | None = None
    through_haproxy_after_s: float | None = None
    received: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.shown_after_s is not None and self.through_haproxy_after_s is not None


async def watch_across(watch_url: str, grab_url: str, balancer_url: str, secret: str,
                       course_id: int, tag: str, grabs: int = 3) -> LiveSeen:
    """Streams of `course_id` on `watch_url` and through HAProxy; `grabs` new residents (named
    after `tag`) grab it through `grab_url`; when each stream showed all of them."""
    seen = LiveSeen(watch_url, grab_url, course_id, grabs)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as http:
        direct = _SeatStream(http, f"{watch_url}/courses/{course_id}/live")
        balanced = _SeatStream(http, f"{balancer_url}/courses/{course_id}/live")
        async with direct, balanced:
            seen.snapshot = await direct.next_seats(LIVE_WAIT_S)
            await balanced.next_seats(LIVE_WAIT_S)
            if seen.snapshot is None:
                return seen
            for n in range(grabs):
                answer = await http.post(f"{grab_url}/v1/courses/{course_id}/bookings",
                                         headers=_resident_headers(secret, f"{tag}-{n}"))
                if answer.status_code == 201:
                    seen.received.add(answer.json()["id"])
            grabbed_at = time.monotonic()
            target = seen.snapshot - len(seen.received)
            shown = await asyncio.gather(direct.until(target, LIVE_WAIT_S),
                                         balanced.until(target, LIVE_WAIT_S))
            seen.last_seen = direct.last
            seen.shown_after_s, seen.through_haproxy_after_s = (
                round(at - grabbed_at, 2) if at is not None else None for at in shown)
    return seen


class _SeatStream:
    """An SSE stream of `seats` events, read by a task of its own: the last seats_left seen."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.last: int | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> _SeatStream:
        response = await self._stack.enter_async_context(self.http.stream("GET", self.url))
        response.raise_for_status()
        self._reader = asyncio.create_task(self._read(response))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._reader
        await self._stack.aclose()

    async def _read(self, response: httpx.Response) -> None:
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "seats":
                self.last = int(json.loads(line.partition(":")[2])["seats_left"])
                self._changed.set()
            elif not line:
                event = None

    async def next_seats(self, timeout_s: float) -> int | None:
        """The first seats_left, waiting up to `timeout_s` (None: none came)."""
        await self.until(None, timeout_s)
        return self.last

    async def until(self, seats_left: int | None, timeout_s: float) -> float | None:
        """When (time.monotonic()) the stream showed `seats_left` (None: any), or None."""
        deadline = time.monotonic() + timeout_s
        while not (self.last is not None and seats_left in (None, self.last)):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return time.monotonic()


# ---------------------------------------------------------------------------------- addresses

@dataclass(frozen=True, slots=True)
class ForwardedSeen:
    """`limit` + 1 grabs from one address through HAProxy: the first answered 429 (its number,
    None: none was), and whether a grab from another address right after was let through."""

    limit: int
    first_429: int | None
    other_address_served: bool

    @property
    def ok(self) -> bool:
        return self.first_429 is not None and self.other_address_served


async def check_forwarded_for(base_url: str, secret: str, course_id: int,
                              limit: int) -> ForwardedSeen:
    """The per-address rate limit judges the address HAProxy forwarded: one address goes past
    it (each grab by another resident), then another address is still served."""
    address = "198.51.100.23"
    first_429 = None
    async with httpx.AsyncClient(base_url=base_url, timeout=PROBE_TIMEOUT_S) as http:
        for n in range(limit + 1):
            answer = await http.post(f"/v1/courses/{course_id}/bookings",
                                     headers=_resident_headers(secret, f"xff-{n}", address))
            if answer.status_code == 429:
                first_429 = n + 1
                break
        other = await http.post(f"/v1/courses/{course_id}/bookings",
                                headers=_resident_headers(secret, "xff-other", "198.51.100.24"))
    return ForwardedSeen(limit, first_429, other.status_code in (200, 201))
