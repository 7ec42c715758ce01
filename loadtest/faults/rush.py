"""The rush: residents who do what residents do on release day while a fault is under way.

They grab (moving on at `sold_out`, backing off at 503), pay the holds of paid courses (a
signed callback, as the payment provider sends), give seats back (paid ones too), swap between
the two courses of a pair in both directions (residents holding A move to B while others
holding B move to A, with room in both), and join, look at and leave the waitlists of sold-out
courses (taking up the booking a promotion gave them). Seats and ledger writes keep flowing,
across courses and in both lock orders, for the whole fault.

Every request becomes an `Answer` (status 0 when no HTTP answer came), judged against what the
API documents for that request (`problem`), so that the figures can say what was answered
during the fault and over the whole run, how fast, and what should not have been answered. A
request still in flight when the rush has ended and drained is `unanswered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from booking.core.auth import mint
from booking.core.signing import signed_headers
from booking.ops.rehearsal import address_of
from loadtest.faults.lab import Plan

REQUEST_TIMEOUT_S = 30.0  # a request still unanswered after this counts as a hang
KEEPALIVE_S = 2.0  # idle client connections close before the service's keep-alive (5 s) does
MAX_WAITING = 2  # waitlists one resident is on at a time
GRAB_409 = frozenset({"sold_out", "not_open", "course_cancelled"})
CANCEL_409 = frozenset({"cancel_deadline_passed"})
SWAP_409 = frozenset({"sold_out", "not_open", "already_booked", "same_course", "not_active",
                      "course_cancelled", "cancel_deadline_passed"})
JOIN_409 = frozenset({"seats_available", "already_booked", "course_cancelled"})
PAYMENT_OUTCOMES = frozenset({"confirmed", "refund_due"})
ACTIVE = frozenset({"held", "confirmed"})

Body = Any  # a decoded JSON answer (an object, a list, or {"code": "not-json"})
Judge = Callable[[int, Body], bool]  # whether a 2xx/404 answer is the one documented


@dataclass(frozen=True, slots=True)
class Stage:
    """The courses a rush plays on: all of them, the paid ones (price in cents) and the swap
    pairs (each course of a pair mapped to the other, both ways)."""

    ids: list[int]
    prices: dict[int, int] = field(default_factory=dict)
    partner: dict[int, int] = field(default_factory=dict)

    def price(self, course_id: int) -> int:
        return self.prices.get(course_id, 0)

    @property
    def hot(self) -> list[int]:
        """The courses outside the swap pairs: few seats each, sold out early in the rush."""
        return [c for c in self.ids if c not in self.partner]


@dataclass(slots=True)
class Answer:
    """One request of the rush: `status` 0 means no HTTP answer (`code` then names why);
    `problem` says why an HTTP answer is not one the API documents for this request."""

    kind: str  # grab, cancel, swap, pay, join, place, leave, mine
    started: float  # time.monotonic()
    ended: float
    status: int
    code: str
    problem: str | None = None

    @property
    def label(self) -> str:
        if not self.status:
            return f"{self.kind} no answer ({self.code})"
        return f"{self.kind} {self.status} {self.code}"


NOTHING = Answer("none", 0.0, 0.0, 200, "nothing to do")  # a step without a request


@dataclass(slots=True)
class Seat:
    booking_id: str
    course_id: int
    held: bool  # a hold of a paid course, waiting for its payment
    paid: bool = False  # a payment confirmed it: ending it owes the resident a refund
    provider_ref: str = ""  # the payment's reference, reused when the callback is retried


@dataclass(slots=True)
class Resident:
    id: str
    headers: dict[str, str]
    seats: dict[int, Seat] = field(default_factory=dict)  # by course
    waiting: set[int] = field(default_factory=set)


class Rush:
    """The crowd: `start()`, let a fault happen, then `finish()`; every answer in `answers`."""

    def __init__(self, base_url: str, secrets: tuple[str, str], stage: Stage, plan: Plan,
                 prefix: str) -> None:
        self.base_url = base_url
        self._secret, self._payment_secret = secrets
        self.stage = stage
        self.plan = plan
        self.prefix = prefix
        self.residents = [self._new_resident(f"{prefix}-{n}") for n in range(plan.residents)]
        self._slots = asyncio.Semaphore(plan.connections)
        self._stop = asyncio.Event()
        self._rng = random.Random(prefix)
        self._numbers = itertools.count()
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.answers: list[Answer] = []
        self.received: set[str] = set()  # booking ids clients were told about
        self.refunds_owed: set[str] = set()  # paid bookings the crowd cancelled or swapped away
        self.unanswered: list[tuple[str, float]] = []  # (kind, started) still open at the end
        self.quiet: set[int] = set()  # courses the crowd leaves alone (no grab, join or cancel)
        self.waves: list[int] = []  # swaps sent at one moment, wave by wave
        self._http: httpx.AsyncClient

    def _new_resident(self, who: str) -> Resident:
        token = mint(self._secret, "resident", who)
        return Resident(who, {"Authorization": f"Bearer {token}",
                              "X-Forwarded-For": address_of(who)})

    # --- the life of the rush ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def finish(self, drain_s: float) -> None:
        """Stop the crowd; give requests in flight `drain_s` to be answered, then count what is
        still open as unanswered and abandon it."""
        self._stop.set()
        tasks = [t for t in (self._task, *self._side_tasks) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        self.unanswered = sorted(self._in_flight.values(), key=lambda kind_at: kind_at[1])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends: a request sent
        # on a connection the server is closing would fail without the service's fault.
        limits = httpx.Limits(max_connections=self.plan.connections,
                              max_keepalive_connections=self.plan.connections,
                              keepalive_expiry=KEEPALIVE_S)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=None)
        wave_limits = httpx.Limits(max_connections=max(1, len(self.stage.partner)
                                                       * self.plan.swap_wave),
                                   keepalive_expiry=KEEPALIVE_S)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits,
                                     timeout=timeout) as self._http, httpx.AsyncClient(
                base_url=self.base_url, limits=wave_limits, timeout=timeout) as waves:
            await asyncio.gather(self._swap_waves(waves),
                                 *(self._live(r) for r in self.residents))

    async def _live(self, r: Resident) -> None:
        await asyncio.sleep(self._rng.random() * self.plan.think_s * 4)  # not all in one tick
        while not self._stop.is_set():
            answer = await self._act(r)
            await asyncio.sleep(self._pause(answer))

    async def _swap_waves(self, http: httpx.AsyncClient) -> None:
        """For each swap pair (A, B), `swap_wave` residents take a seat in A and as many in B;
        then every `wave_every_s` (or as soon as the last wave is answered) all of them swap
        across at the same moment, each on a connection of its own, and pay the hold a paid
        side gives: opposite swaps that overlap in Postgres, as on a real release day."""
        plan, partner = self.plan, self.stage.partner
        sides = [c for c in partner for _ in range(plan.swap_wave)]
        swappers = [(self._new_resident(f"{self.prefix}-swapper-{n}"), side)
                    for n, side in enumerate(sides)]
        wave_at = time.monotonic()
        while swappers and not self._stop.is_set():
            if any(r.seats for r, _ in swappers):
                self.waves.append(sum(1 for r, _ in swappers if r.seats))
            await asyncio.gather(*(self._cross(r, side, http) for r, side in swappers))
            wave_at = max(wave_at + plan.wave_every_s, time.monotonic())
            await _stopped(self._stop, wave_at - time.monotonic())

    async def _cross(self, r: Resident, side: int, http: httpx.AsyncClient) -> None:
        """One swapper's turn in a wave: swap to the other side (or take a first seat), then pay
        the hold that gave."""
        if r.seats:
            await self.swap(r, next(iter(r.seats.values())), http=http)
        else:
            await self.grab(r, side, http=http)
        hold = next((s for s in r.seats.values() if s.held), None)
        if hold is not None:
            await self.pay(r, hold, http=http)

    async def _act(self, r: Resident) -> Answer:
        """One step of a resident: pay a hold, look at a waitlist place, swap within a pair,
        give a seat back, or grab (and maybe join the waitlist of a sold-out course)."""
        rng, plan = self._rng, self.plan
        hold = next((s for s in r.seats.values() if s.held), None)
        if hold is not None and rng.random() < plan.pay_share:
            return await self.pay(r, hold)
        if r.waiting and rng.random() < plan.look_share:
            return await self._look(r, rng.choice(sorted(r.waiting)))
        movable = [s for s in r.seats.values() if self._swappable(r, s.course_id)]
        if movable and rng.random() < plan.swap_share:
            return await self.swap(r, rng.choice(movable))
        free = self._grabbable(r)
        mine = [s for s in r.seats.values() if s.course_id not in self.quiet]
        if mine and (not free or rng.random() < plan.cancel_share):
            return await self.cancel(r, rng.choice(mine))
        if not free:
            return await self._look(r, next(iter(r.waiting))) if r.waiting else NOTHING
        sides = [c for c in free if c in self.stage.partner]
        # Without a seat of a pair, a resident takes one side of it first: swappers to be.
        course_id = rng.choice(sides if sides and rng.random() < plan.swap_share else free)
        answer = await self.grab(r, course_id)
        if (answer.code == "sold_out" and course_id not in r.waiting
                and len(r.waiting) < MAX_WAITING and rng.random() < plan.waitlist_share):
            return await self.join(r, course_id)
        return answer

    def _swappable(self, r: Resident, course_id: int) -> bool:
        partner = self.stage.partner.get(course_id)
        return partner is not None and partner not in r.seats

    def _grabbable(self, r: Resident) -> list[int]:
        """Courses the resident holds no seat of (at most one course of each swap pair), but
        not those a scenario keeps quiet."""
        partner, quiet = self.stage.partner, self.quiet
        return [c for c in self.stage.ids
                if c not in r.seats and partner.get(c) not in r.seats and c not in quiet]

    def _pause(self, answer: Answer) -> float:
        """A short think; a little longer after a 503 or no answer (a frantic, not a DoS, crowd)."""
        if answer.status in (0, 429, 503):
            return 0.1 + self._rng.random() * 0.2
        return self._rng.random() * self.plan.think_s

    # --- what a resident does ------------------------------------------------------------------

    async def grab(self, r: Resident, course_id: int,
                   http: httpx.AsyncClient | None = None) -> Answer:
        price = self.stage.price(course_id)
        answer, body = await self._send(
            "grab", "POST", f"/v1/courses/{course_id}/bookings", r.headers,
            lambda status, body: _booking_ok(status, body, course_id, price),
            refusals=GRAB_409, http=http)
        if answer.problem is None and answer.status in (200, 201):
            seat = Seat(body["id"], course_id, held=body["status"] == "held",
                        paid=price > 0 and body["status"] == "confirmed")
            r.seats[course_id] = seat
            self.received.add(seat.booking_id)
        return answer

    async def cancel(self, r: Resident, seat: Seat) -> Answer:
        ended = {"cancelled", "expired"} if seat.held else {"cancelled"}
        answer, _ = await self._send(
            "cancel", "DELETE", f"/v1/bookings/{seat.booking_id}", r.headers,
            lambda status, body: status == 200 and isinstance(body, dict)
            and body.get("id") == seat.booking_id and body.get("status") in ended,
            refusals=CANCEL_409)
        if answer.status == 200 and answer.problem is None:
            self._ended(r, seat)
        return answer

    async def swap(self, r: Resident, old: Seat, http: httpx.AsyncClient | None = None) -> Answer:
        """Move the seat to the other course of its pair, in one step, or keep the old one."""
        target = self.stage.partner[old.course_id]
        price = self.stage.price(target)
        answer, body = await self._send(
            "swap", "POST", f"/v1/bookings/{old.booking_id}/swap", r.headers,
            lambda status, body: status == 201 and _booking_ok(status, body, target, price)
            and body.get("id") != old.booking_id,
            refusals=SWAP_409, json_body={"course_id": target}, http=http)
        if answer.status == 201 and answer.problem is None:
            self._ended(r, old)
            r.seats[target] = Seat(body["id"], target, held=body["status"] == "held")
            self.received.add(body["id"])
        return answer

    def _ended(self, r: Resident, seat: Seat) -> None:
        r.seats.pop(seat.course_id, None)
        if seat.paid:
            self.refunds_owed.add(seat.booking_id)

    async def pay(self, r: Resident, seat: Seat, http: httpx.AsyncClient | None = None) -> Answer:
        """The provider's signed callback for a hold (retried with the same reference)."""
        seat.provider_ref = seat.provider_ref or f"{self.prefix}-pay-{next(self._numbers)}"
        content = json.dumps({"provider_ref": seat.provider_ref, "booking_id": seat.booking_id,
                              "amount_cents": self.stage.price(seat.course_id),
                              "status": "paid"}).encode()
        answer, body = await self._send(
            "pay", "POST", "/v1/payments/callback",
            signed_headers(self._payment_secret, content),
            lambda status, body: status == 200 and isinstance(body, dict)
            and body.get("booking_id") == seat.booking_id
            and body.get("outcome") in PAYMENT_OUTCOMES, content=content, http=http)
        if answer.status == 200 and answer.problem is None:
            if body["outcome"] == "confirmed":
                seat.held, seat.paid = False, True
            elif body.get("booking_status") not in ACTIVE:  # ended before it was paid
                r.seats.pop(seat.course_id, None)
        return answer

    async def join(self, r: Resident, course_id: int) -> Answer:
        answer, _ = await self._send(
            "join", "POST", f"/v1/courses/{course_id}/waitlist", r.headers,
            lambda status, body: status in (200, 201) and _place_ok(body, course_id),
            refusals=JOIN_409)
        if answer.status in (200, 201) and answer.problem is None:
            r.waiting.add(course_id)
        return answer

    async def _look(self, r: Resident, course_id: int) -> Answer:
        """Leave the waitlist (one look in three) or look at the place; a place gone (404) may
        be a promotion: the resident then finds the booking in their list."""
        path = f"/v1/courses/{course_id}/waitlist/me"
        if self._rng.random() < 1 / 3:
            answer, _ = await self._send(
                "leave", "DELETE", path, r.headers,
                lambda status, body: _gone(status, body) or (
                    status == 200 and isinstance(body, dict) and body.get("status") == "left"
                    and body.get("course_id") == course_id and body.get("position") is None))
        else:
            answer, _ = await self._send(
                "place", "GET", path, r.headers,
                lambda status, body: _gone(status, body) or (
                    status == 200 and _place_ok(body, course_id)))
        if answer.problem is None and answer.status in (200, 404):
            if answer.status == 404 or answer.kind == "leave":
                r.waiting.discard(course_id)
            if answer.status == 404:
                await self._adopt(r, course_id)
        return answer

    async def _adopt(self, r: Resident, course_id: int) -> None:
        """The booking a promotion gave the resident, if any, from their list of bookings."""
        answer, body = await self._send(
            "mine", "GET", "/v1/me/bookings", r.headers,
            lambda status, body: status == 200 and isinstance(body, list))
        if answer.status != 200 or answer.problem is not None:
            return
        for booking in body:
            if (isinstance(booking, dict) and booking.get("course_id") == course_id
                    and booking.get("status") in ACTIVE and isinstance(booking.get("id"), str)
                    and course_id not in r.seats):
                r.seats[course_id] = Seat(booking["id"], course_id,
                                          held=booking["status"] == "held")
                self.received.add(booking["id"])

    # --- on a scenario's cue ---------------------------------------------------------------------

    async def fill(self, seats_left: dict[int, int]) -> None:
        """Residents who come for just that grab the seats left of these courses, once each."""
        grabs = [(course_id, self._new_resident(f"{self.prefix}-fill-{course_id}-{n}"))
                 for course_id, left in seats_left.items() for n in range(left)]
        await asyncio.gather(*(self.grab(r, course_id) for course_id, r in grabs))

    async def burst_join(self, course_ids: list[int], count: int, bound_s: float,
                         tag: str = "burst") -> list[Answer]:
        """`count` residents who hold nothing join the waitlists of `course_ids` (in turn) at the
        same moment, each on a connection of its own opened beforehand. Returns once every one
        is answered or after `bound_s`; what is still open then stays in flight (counted as
        unanswered if the rush ends before its answer)."""
        joiners = [self._new_resident(f"{self.prefix}-{tag}-{n}") for n in range(count)]
        go = asyncio.Event()
        ready = 0

        async def one(http: httpx.AsyncClient, r: Resident, course_id: int) -> Answer:
            nonlocal ready
            await http.get("/health")  # the connection is open before the moment
            ready += 1
            await go.wait()
            answer, _ = await self._send(
                "burst join", "POST", f"/v1/courses/{course_id}/waitlist", r.headers,
                lambda status, body: status in (200, 201) and _place_ok(body, course_id),
                refusals=JOIN_409, http=http)
            return answer

        http = httpx.AsyncClient(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S,
                                 limits=httpx.Limits(max_connections=count))
        tasks = [asyncio.create_task(one(http, r, course_ids[n % len(course_ids)]))
                 for n, r in enumerate(joiners)]
        closer = asyncio.create_task(_close_after(http, tasks))
        self._side_tasks.update([*tasks, closer])
        while ready < count and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        go.set()
        await asyncio.wait(tasks, timeout=bound_s)
        return [t.result() for t in tasks if t.done() and not t.cancelled()
                and t.exception() is None]

    # --- one request ---------------------------------------------------------------------------

    async def _send(self, kind: str, method: str, path: str, headers: dict[str, str],
                    judge: Judge, *, refusals: frozenset[str] = frozenset(),
                    json_body: dict[str, object] | None = None, content: bytes | None = None,
                    http: httpx.AsyncClient | None = None) -> tuple[Answer, Body]:
        body: Body = {}
        problem = None
        number = next(self._numbers)
        async with contextlib.nullcontext() if http else self._slots:
            started = time.monotonic()
            self._in_flight[number] = (kind, started)
            try:
                response = await (http or self._http).request(
                    method, path, headers=headers, json=json_body, content=content)
                status, body = response.status_code, _decoded(response)
                code = _code_of(body, status)
                problem = _judged(status, body, code, judge, refusals)
            except httpx.TimeoutException as exc:
                status, code = 0, f"timeout: {type(exc).__name__}"
            except httpx.TransportError as exc:
                status, code = 0, type(exc).__name__
            finally:
                self._in_flight.pop(number, None)
        answer = Answer(kind, started, time.monotonic(), status, code, problem)
        self.answers.append(answer)
        return answer, body


async def _stopped(stop: asyncio.Event, wait_s: float) -> bool:
    """Wait `wait_s` or until `stop` is set; whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), wait_s)
    return stop.is_set()


async def _close_after(http: httpx.AsyncClient, tasks: list[asyncio.Task[Answer]]) -> None:
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await http.aclose()


def _decoded(response: httpx.Response) -> Body:
    try:
        return response.json()
    except ValueError:
        return {"code": "not-json"}


def _code_of(body: Body, status: int) -> str:
    """The error code, or what a success says: a booking's status, a payment's outcome, a
    waitlist place's status, `list` for a list."""
    if isinstance(body, list):
        return "list"
    if not isinstance(body, dict):
        return "not-an-object"
    for key in ("code", "outcome", "status"):
        if isinstance(body.get(key), str):
            return body[key]
    return "?"


def _judged(status: int, body: Body, code: str, judge: Judge,
            refusals: frozenset[str]) -> str | None:
    """None when the answer is one the API documents for this request; 5xx answers are judged
    by the shared rules (only 503 `unavailable` is allowed, and only during a fault)."""
    if status >= 500 or (status == 429 and code == "rate_limited"):
        return None
    if (status == 409 and code in refusals) or judge(status, body):
        return None
    return f"{status} {str(body)[:160]}"


def _booking_ok(status: int, body: Body, course_id: int, price: int) -> bool:
    """A booking of this course: a new one (201) is a hold with `expires_at` on a paid course
    and confirmed on a free one; one held already (200) is active (a paid one may be paid)."""
    if not (status in (200, 201) and isinstance(body, dict) and isinstance(body.get("id"), str)
            and body.get("course_id") == course_id):
        return False
    if status == 201 and price:
        return body.get("status") == "held" and isinstance(body.get("expires_at"), str)
    return body.get("status") in (ACTIVE if price else {"confirmed"})


def _place_ok(body: Body, course_id: int) -> bool:
    position = body.get("position") if isinstance(body, dict) else None
    return (isinstance(position, int) and position >= 1 and body.get("course_id") == course_id
            and body.get("status") == "waiting")


def _gone(status: int, body: Body) -> bool:
    """404 `not_found`: the place was promoted or cleared a moment before."""
    return status == 404 and isinstance(body, dict) and body.get("code") == "not_found"


async def probe_readiness(base_url: str, stop: asyncio.Event,
                          every_s: float = 0.2) -> list[tuple[float, int]]:
    """Poll `/ready` as a load balancer would: (time.monotonic(), status; 0 for no answer)."""
    seen: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=3) as client:
        while not stop.is_set():
            at = time.monotonic()
            try:
                status = (await client.get("/ready")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((at, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return seen
