"""A process's memory of the courses the gate just refused: sold out, or not open yet.

On release night almost every grab is refused. `GateMemory` lets a process answer the next grabs
of a refused course by itself, without Redis, and never falsely beyond a stated bound:

- What is remembered comes from the gate. After a `sold_out` or `not_open` answer, one small
  script (refusing.lua) looks again, atomically: does the course still refuse every grab, and who
  holds its seats? A holder's grab still goes to the gate (which answers with their booking, so
  an idempotent retry keeps working); everyone else gets the remembered answer.
- Every script that can free a seat or change what a grab is decided on (free.lua,
  unpromote.lua, an applied sync.lua, the last waiter leaving the queue) publishes the course's
  id in the same atomic step, so no path can forget to, on `booking:course-changed:<db>` (see
  scripts.changes_channel). A listener per process
  forgets the course when that arrives, and forgets everything on each (re)subscribe, since
  announcements may have been lost while it was not subscribed.
- A lost announcement costs at most `ttl_s`. An entry is trusted for `ttl_s` from the later of
  two moments: just before the gate was asked, and the last moment this process knows it had
  heard every announcement made so far (a `not_open` one at most until sales open, by the
  gate's clock). So a remembered `sold_out` was true at some moment in the last `ttl_s`.
- That second moment is the process's heartbeat: every HEARTBEAT_S it publishes a beat of its
  own on the channel of every server it listens to, noting when it sent it. Pub/sub keeps each
  server's order, so hearing its beat back means every announcement that server made before it
  has been heard: the entries stay trusted while beats come back (at 4,000 courses, most would
  otherwise lapse before their course was grabbed again in this process). A process that stops
  hearing its beats (its loop frozen, its subscription stalled) stops trusting its entries
  `ttl_s` after the last beat it heard was sent; one that lost its subscription forgets
  everything when it is back.
- The look's reply and an announcement ride different connections, so an announcement of a
  course may arrive before the reply of a look at it that it made stale. Any announcement heard
  while a look is in flight spoils that look, and it is not remembered.
- One look per course at a time: concurrent refusals of one course do not each ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from booking.core.observability import GRABS_FROM_MEMORY
from booking.core.stores import RedisClient, primary_clients
from booking.seats.gate import Decision, Outcome, course_keys
from booking.seats.scripts import changes_channel, load_script

log = logging.getLogger("booking.seats.memory")

TTL_S = 1.0  # the bound: how long a remembered refusal may outlive a lost announcement
RESUBSCRIBE_S = 0.5  # the pause before subscribing again after the subscription failed
HEARTBEAT_S = 0.25  # how often a process checks that it still hears every announcement
_BEAT = "beat"  # a heartbeat's data: "beat <process token> <server index> <beat number>"
REMEMBERED = frozenset({Outcome.SOLD_OUT, Outcome.NOT_OPEN})
PURGE_FROM = 1024  # entries; expired ones are dropped when the memory grows past this
_SOLD_OUT = Decision(Outcome.SOLD_OUT)
_COUNTED = {outcome: GRABS_FROM_MEMORY.labels(outcome.value) for outcome in REMEMBERED}


@dataclass(frozen=True, slots=True)
class _Refusal:
    decision: Decision
    holders: frozenset[str]  # their grabs go to the gate (it answers with their booking)
    learned_at: float  # time.monotonic() just before the gate was asked
    ends_at: float  # time.monotonic() past which it is false whatever is heard (an opening)


@dataclass(slots=True)
class _Look:
    spoiled: bool = False  # an announcement of the course arrived while this look was in flight


class GateMemory:
    """Answers grabs of a course the gate refused a moment ago, without Redis (see above).

    `start()` the listener; without it (or while it is not subscribed) entries still expire
    after `ttl_s`, which is the bound whatever happens to the announcements."""

    def __init__(self, redis: RedisClient, ttl_s: float = TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.channel = changes_channel(redis)
        self.subscribed = asyncio.Event()  # set while the listener is subscribed
        self.announcements = 0  # announcements heard so far (a cluster's: once per primary)
        self.servers = 0  # the servers subscribed to: a cluster's primaries, or the one Redis
        self.recently_heard: deque[int] = deque(maxlen=256)  # the courses last announced
        # Test hook, awaited between a look's reply and its entry being written.
        self.before_remembering: Callable[[int], Awaitable[None]] | None = None
        self._look = load_script(redis, "booking.seats", "refusing")
        self._refusals: dict[int, _Refusal] = {}
        self._looks: dict[int, _Look] = {}
        self._purge_at = PURGE_FROM
        self._listener: asyncio.Task[None] | None = None
        self._outage_told = False  # a lost subscription was logged; quiet until it is back
        self._token = uuid.uuid4().hex[:12]  # tells this process's beats from others'
        self._beats_sent: dict[int, float] = {}  # beat number -> when it was sent (monotonic)
        # Per server listened to: when the last beat heard back from it was sent. Every
        # announcement the server made before then has been heard.
        self._heard_until: list[float] = []
        self.heard_all_until = -math.inf  # the least of those (-inf: not known)

    def answer(self, course_id: int, resident_id: str) -> Decision | None:
        """The refusal remembered for this resident's grab of the course; None: ask the gate."""
        refusal = self._refusals.get(course_id)
        if refusal is None or resident_id in refusal.holders:
            return None
        if not self._trusted(refusal, time.monotonic()):
            del self._refusals[course_id]
            return None
        _COUNTED[refusal.decision.outcome].inc()
        return refusal.decision

    def remembers(self, course_id: int) -> bool:
        refusal = self._refusals.get(course_id)
        return refusal is not None and self._trusted(refusal, time.monotonic())

    def _trusted(self, refusal: _Refusal, now: float) -> bool:
        """True at some moment in the last `ttl_s`: its look, or the last moment every
        announcement was known heard, whichever is later (and not past its own end)."""
        return (now < refusal.ends_at
                and now < max(refusal.learned_at, self.heard_all_until) + self.ttl_s)

    async def learn(self, course_id: int) -> None:
        """Call after the gate refused a grab of the course (sold out or not open): look again
        and remember what the gate says now, unless a look is in flight or still remembered."""
        if course_id in self._looks or self.remembers(course_id):
            return
        look = self._looks[course_id] = _Look()
        asked_at = time.monotonic()  # the entry's life counts from here: before the gate looked
        try:
            info, holders, _, waiting = course_keys(course_id)
            reply = await self._look(keys=[info, holders, waiting])
            if self.before_remembering is not None:
                await self.before_remembering(course_id)
        # Also what redis-py 8.1 lets escape from a connection closed mid-call
        # (redis/redis-py#4287): only a chance missed, the grab had its answer.
        except (RedisError, OSError, AttributeError, TypeError, RuntimeError) as exc:
            log.debug("could not look at course %s again: %s", course_id, exc)
            return
        finally:
            del self._looks[course_id]
        if not look.spoiled:
            self._remember(course_id, reply, asked_at)

    def _remember(self, course_id: int, reply: list[Any], asked_at: float) -> None:
        outcome = Outcome(reply[0]) if reply[0] != "open" else None
        if outcome is None:
            return
        ends_at = math.inf
        if outcome is Outcome.NOT_OPEN:
            ends_at = asked_at + int(reply[1]) / 1000
            decision = Decision(outcome, opens_at_ms=int(reply[2]))
        else:
            decision = _SOLD_OUT
        self._refusals[course_id] = _Refusal(decision, frozenset(reply[3:]), asked_at, ends_at)
        if len(self._refusals) >= self._purge_at:
            self._purge()

    def _purge(self) -> None:
        now = time.monotonic()
        for course_id in [cid for cid, r in self._refusals.items() if not self._trusted(r, now)]:
            del self._refusals[course_id]
        self._purge_at = max(PURGE_FROM, 2 * len(self._refusals))

    def forget(self, course_id: int) -> None:
        """The course changed: drop what is remembered of it and spoil a look in flight."""
        self._refusals.pop(course_id, None)
        look = self._looks.get(course_id)
        if look is not None:
            look.spoiled = True

    def forget_all(self) -> None:
        self._refusals.clear()
        for look in self._looks.values():
            look.spoiled = True

    # --- the listener -------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening for announcements (one task; `stop()` ends it)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:  # told once per outage, not every attempt
                log.log(logging.DEBUG if self._outage_told else logging.WARNING,
                        "not subscribed to changed courses (%s); trying again", exc)
                self._outage_told = True
            await asyncio.sleep(RESUBSCRIBE_S)

    async def _listen(self) -> None:
        """Subscribed on every primary: a script's PUBLISH reaches the subscribers of its own
        server before its reply does, as on a single Redis, so an announcement is never behind
        the answer that follows it (on a cluster, the copies other nodes relay come later and
        change nothing)."""
        clients = await primary_clients(self.redis)
        pubsubs = [client.pubsub() for client in clients]
        self.servers = len(pubsubs)
        self._heard_until = [-math.inf] * len(pubsubs)
        self.heard_all_until = -math.inf
        confirmed = [0]
        drains = [asyncio.ensure_future(self._drain(pubsub, server, confirmed, len(pubsubs)))
                  for server, pubsub in enumerate(pubsubs)]
        drains.append(asyncio.ensure_future(self._beat(clients)))
        try:
            done, _ = await asyncio.wait(drains, return_when=asyncio.FIRST_EXCEPTION)
            for drain in done:
                drain.result()  # the first failure, to be told and retried
        finally:
            self.subscribed.clear()
            for drain in drains:
                drain.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            for closing in (*pubsubs, *clients):
                with contextlib.suppress(RedisError, OSError):
                    await closing.aclose()

    async def _drain(self, pubsub: PubSub, server: int, confirmed: list[int],
                     servers: int) -> None:
        await pubsub.subscribe(self.channel)
        async for message in pubsub.listen():
            if message["type"] == "subscribe":
                confirmed[0] += 1
                if confirmed[0] < servers:
                    continue
            elif message["type"] == "message" and message["data"].startswith(_BEAT):
                self._beat_heard(message["data"], server)
                continue
            self._heard(message)

    async def _beat(self, clients: list[Redis]) -> None:
        """Publish a beat on every server each HEARTBEAT_S, noting when it was sent (a
        failed publish ends the subscription, which forgets everything when it is back)."""
        number = 0
        while True:
            number += 1
            self._beats_sent[number] = time.monotonic()
            self._beats_sent.pop(number - 64, None)  # a beat not back after 16 s never counts
            for server, client in enumerate(clients):
                await client.publish(self.channel, f"{_BEAT} {self._token} {server} {number}")
            await asyncio.sleep(HEARTBEAT_S)

    def _beat_heard(self, data: str, server: int) -> None:
        """A beat of this process, back from the server it was published on (a cluster
        relays every beat to every node: those copies, and other processes' beats, say
        nothing about this subscription's order)."""
        _, token, published_on, number = data.split(" ")
        sent = self._beats_sent.get(int(number))
        if token != self._token or int(published_on) != server or sent is None:
            return
        self._heard_until[server] = max(self._heard_until[server], sent)
        self.heard_all_until = min(self._heard_until)

    def _heard(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":  # (re)subscribed: what came meanwhile is lost
            self.forget_all()
            self.subscribed.set()
            if self._outage_told:
                log.info("subscribed to changed courses again")
                self._outage_told = False
        elif message["type"] == "message":
            self.announcements += 1
            try:
                course_id = int(message["data"])
            except ValueError:
                log.warning("unreadable announcement %r", message["data"])
                return
            self.forget(course_id)
            self.recently_heard.append(course_id)
