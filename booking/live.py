"""Live seat counts: one watcher per process, Redis pub/sub to the streams.

A stream's event data is `{"course_id", "seats_left", "status"}`, with `status` one of:

- `open`: on sale, with seats left;
- `not_open`: sales have not opened yet (`seats_left`: what will be on sale);
- `sold_out`: on sale, no seat left (the waitlist takes residents);
- `cancelled`: the course is cancelled (`seats_left` is 0).

How it flows:

- The grab path never publishes. Each process runs one `SeatWatcher`: once a second it reads the
  gate (the same facts a grab is decided on: seats left, status, opening time) of the courses its
  own streams watch, in one Redis round trip, and publishes each course whose state changed to
  that course's channel, through Litestar's `ChannelsPlugin` (Redis pub/sub backend, a backlog of
  one per subscriber, `dropleft`: the newest wins). A rush costs one read per process per second,
  however many grabs and viewers.
- A `LiveStream` (one client) holds one subscriber per course, sends a snapshot at once, then an
  event only when a course's state differs from what it last sent, at most one per course per
  second (changes in between are coalesced, newest wins; the watchers of several processes may
  publish the same change, which a stream drops as already sent).
- A stream opens and closes its bookkeeping (stream count, watched courses) synchronously, as
  `with stream:`. Litestar cancels a stream's task when its client goes, and an await in the
  cleanup can then be skipped (litestar issue 3772), so nothing there awaits: the subscribing
  and the unsubscribing run in tasks of their own, which a cancelled stream cannot interrupt.
- Observable on `/metrics` (summed over the workers): `booking_live_streams`,
  `booking_live_subscribers`, `booking_live_watched_courses`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.channels import ChannelsPlugin, Subscriber
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from prometheus_client import Gauge
from redis.asyncio import Redis

from booking.core.errors import NotFound
from booking.core.fields import storable_id
from booking.core.settings import ConfigError, Settings
from booking.core.stores import RedisClient, node_client
from booking.seats import course_keys
from booking.seats.seating import Seats

log = logging.getLogger("booking.live")

OPEN, NOT_OPEN, SOLD_OUT, CANCELLED = "open", "not_open", "sold_out", "cancelled"
TICK_S = 1.0  # how often a watcher reads the gate
MIN_GAP_S = 1.0  # a stream sends at most one event per course in this time
HEARTBEAT_S = 10.0  # a comment after this much silence: proxies and carrier NAT drop idle streams
MAX_COURSES = 200  # courses on one stream
RELEASE_WAIT_S = 5.0  # how long a shutdown waits for the last unsubscribes
RESUME_S = 1.0  # how long the pub/sub reader waits after a Redis error before it reads again
# How long the pub/sub reader waits for a message before it looks again (Litestar's default of
# 1 ms would spin a core's worth of loop iterations while anything is subscribed).
PUBSUB_WAIT_MS = 1000

STREAMS = Gauge("booking_live_streams", "Open live-seat streams",
                multiprocess_mode="livesum")
SUBSCRIBERS = Gauge("booking_live_subscribers",
                    "Channel subscribers of the live-seat streams (one per course and stream)",
                    multiprocess_mode="livesum")
WATCHED = Gauge("booking_live_watched_courses", "Courses the seat watchers read every second",
                multiprocess_mode="livesum")


@dataclass(frozen=True, slots=True)
class SeatState:
    """What a resident sees of a course's seats: the stream's event data, `/seats`'s body."""

    course_id: int
    seats_left: int
    status: str

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


def seat_state(course_id: int, left: int, gate_status: str, opens_at_ms: int,
               now_ms: float) -> SeatState:
    """The state from the gate's facts, decided as a grab would be (see grab.lua)."""
    if gate_status != "published":
        return SeatState(course_id, 0, CANCELLED)
    left = max(left, 0)
    if now_ms < opens_at_ms:
        return SeatState(course_id, left, NOT_OPEN)
    return SeatState(course_id, left, OPEN if left > 0 else SOLD_OUT)


async def read_states(seats: Seats, course_ids: Iterable[int]) -> dict[int, SeatState]:
    """The state of each course there is (a course the gate has not loaded is loaded first;
    an id no course has is left out)."""
    ids = [cid for cid in dict.fromkeys(course_ids) if storable_id(cid)]
    facts = await _gate_facts(seats, ids)
    missing = [cid for cid in ids if cid not in facts]
    if missing:
        await seats.seats_left(missing)  # loads each from Postgres, if it has it
        facts |= await _gate_facts(seats, missing)
    now_ms = time.time() * 1000
    return {cid: seat_state(cid, *fact, now_ms) for cid, fact in facts.items()}


async def _gate_facts(seats: Seats, ids: Sequence[int]) -> dict[int, tuple[int, str, int]]:
    """Seats left, status and opening time (ms) per course the gate holds, in one round trip."""
    if not ids:
        return {}
    async with seats.gate.redis.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.hmget(course_keys(cid)[0], "left", "status", "opens_at")
        replies = await pipe.execute()
    return {cid: (int(left), status, int(opens_at or 0))
            for cid, (left, status, opens_at) in zip(ids, replies, strict=True)
            if left is not None and status is not None}


def channel_name(db: int, course_id: int) -> str:
    """A course's channel. Pub/sub ignores Redis's database numbers, so the channel names the
    database, as a key would be kept apart by it."""
    return f"booking:{db}:seats:{course_id}"


def pubsub_client(settings: Settings, redis: RedisClient | None) -> Redis:
    """A client of its own for the channels plugin (its pub/sub holds a connection; the plugin
    wants bytes back): on the given client's server and database (a cluster: one of its
    nodes, each of which hears every PUBLISH), or on REDIS_URL."""
    if redis is not None:
        return node_client(redis, decode_responses=False)
    if not settings.redis_url:
        raise ConfigError("REDIS_URL must be set for the app; `booking serve` sets it for you.")
    # No health_check_interval: its PING would read the pub/sub replies the plugin reads.
    return Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)


class PlainPublishBackend(RedisChannelsPubSubBackend):
    """Litestar's pub/sub backend, publishing with plain PUBLISH: its own publish runs a Lua
    script with the channel names as KEYS, which a Redis Cluster routes by slot (MOVED from any
    node that does not own the channel name's slot), while a PUBLISH is heard cluster-wide
    from whichever node gets it."""

    async def publish(self, data: bytes, channels: Iterable[str]) -> None:
        for channel in set(channels):
            await self._redis.publish(channel, data)

    async def move_to(self, client: Redis) -> None:
        """Hear (and publish) the same channels through another server: the one it used is
        gone (a cluster node killed stays refused on its address)."""
        old_pubsub, old_client = self._pub_sub, self._redis
        channels = [c.decode() if isinstance(c, bytes) else c for c in old_pubsub.channels]
        self._redis = client
        self._RedisChannelsPubSubBackend__pub_sub = None  # Litestar's own: made anew on use
        if channels:
            await self.subscribe(channels)
        with contextlib.suppress(Exception):
            await old_pubsub.aclose()
            await old_client.aclose()


class LiveChannels(ChannelsPlugin):
    """Litestar's channels plugin, with a subscribe that is undone when Redis refuses it. The
    plugin's own keeps the subscriber of a channel whose SUBSCRIBE failed, so the channel counts
    as subscribed while Redis never heard of it: no event of that course would reach this
    process again. Callers subscribe one at a time (LiveSeats holds a lock)."""

    closing = False  # shutting down: its connection goes, and every subscription with it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_resume: Callable[[], None] = lambda: None
        self.new_client: Callable[[], Redis] | None = None  # a cluster: another node's client

    async def __aexit__(self, *exc_info: Any) -> None:
        self.closing = True
        await super().__aexit__(*exc_info)

    async def _sub_worker(self) -> None:
        """The plugin's reader of pub/sub messages, started again after a Redis error: the
        plugin's own ends for good, and no event would reach this process's streams again.
        Messages may be lost meanwhile, so `on_resume` has every watched course published."""
        while True:
            try:
                await super()._sub_worker()
                return
            except Exception as exc:
                log.warning("live seats: pub/sub reading failed (again in %s s): %s: %s",
                            RESUME_S, type(exc).__name__, exc)
            await asyncio.sleep(RESUME_S)
            if self.new_client is not None and isinstance(self._backend, PlainPublishBackend):
                with contextlib.suppress(Exception):
                    await self._backend.move_to(self.new_client())
            self.on_resume()

    async def subscribe(self, channels: str | Iterable[str],
                        history: int | None = None) -> Subscriber:
        names = [channels] if isinstance(channels, str) else list(channels)
        before = {name: set(self._channels.get(name, ())) for name in names}
        try:
            return await super().subscribe(names, history)
        except BaseException:
            for name in names:
                if name in self._channels:
                    self._channels[name] &= before[name]
            raise


class SeatWatcher:
    """Reads the gate of the courses this process's streams watch, once a second, and publishes
    each course whose state changed, or that a new stream asked to hear again."""

    def __init__(self, seats: Seats, publish: Callable[[bytes, int], Awaitable[None]]) -> None:
        self._seats = seats
        self._publish = publish
        self._watching: Counter[int] = Counter()  # course id -> streams watching it
        self._last: dict[int, bytes] = {}  # course id -> the state last published
        self._again: set[int] = set()  # published at the next tick even if unchanged
        self._failing = False

    def watch(self, course_ids: Iterable[int]) -> None:
        for cid in course_ids:
            self._watching[cid] += 1
        WATCHED.set(len(self._watching))

    def unwatch(self, course_ids: Iterable[int]) -> None:
        for cid in course_ids:
            self._watching[cid] -= 1
            if self._watching[cid] <= 0:
                del self._watching[cid]
                self._last.pop(cid, None)
                self._again.discard(cid)
        WATCHED.set(len(self._watching))

    def again(self, course_ids: Iterable[int]) -> None:
        """Publish these courses at the next tick: a stream subscribed after its snapshot hears
        any change it might have missed in between (it drops a state it already has)."""
        self._again.update(cid for cid in course_ids if cid in self._watching)

    def again_all(self) -> None:
        self._again.update(self._watching)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if self._watching:
                await self._tick_logged()
            await asyncio.sleep(max(0.0, started + TICK_S - loop.time()))

    async def _tick_logged(self) -> None:
        """A tick; a failing store is logged once, not every second, until it answers again."""
        try:
            await self.tick()
        except Exception as exc:
            if not self._failing:
                log.warning("live seats paused: %s: %s", type(exc).__name__, exc)
            self._failing = True
            return
        if self._failing:
            log.info("live seats running again")
        self._failing = False

    async def tick(self) -> None:
        again, self._again = self._again, set()
        states = await read_states(self._seats, list(self._watching))
        changed: list[tuple[int, bytes]] = []
        for cid, state in states.items():
            payload = state.encode()
            if cid in self._watching and (payload != self._last.get(cid) or cid in again):
                self._last[cid] = payload
                changed.append((cid, payload))
        results = await asyncio.gather(*(self._publish(payload, cid) for cid, payload in changed),
                                       return_exceptions=True)
        failed = [(cid, r) for (cid, _), r in zip(changed, results, strict=True)
                  if isinstance(r, BaseException)]
        for cid, _ in failed:  # published again at the next tick
            self._last.pop(cid, None)
        if failed:
            raise failed[0][1]


class LiveSeats:
    """This process's live seat counts: the channels plugin, the watcher and the open streams.

    `plugin` goes to the app's plugins when the app is built; `start` (in the lifespan, once the
    seat gate exists) starts the watcher, `stop` ends it and closes the plugin's client."""

    def __init__(self, client: Redis, max_streams: int) -> None:
        self.plugin = LiveChannels(
            backend=PlainPublishBackend(redis=client,
                                               stream_sleep_no_subscriptions=PUBSUB_WAIT_MS),
            arbitrary_channels_allowed=True, subscriber_max_backlog=1,
            subscriber_backlog_strategy="dropleft")
        self.max_streams = max_streams
        self.streams = 0  # open streams
        self.subscribers = 0  # channel subscribers held for them
        self._client = client
        self._db = int(client.connection_pool.connection_kwargs.get("db") or 0)
        self._seats: Seats | None = None
        self._watcher: SeatWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        # One subscribe or unsubscribe at a time: the plugin decides whether Redis must hear of
        # a channel before it awaits, and redis-py's pub/sub connects on its first command.
        self._pubsub_lock = asyncio.Lock()
        self.plugin.on_resume = self._publish_all_again

    @classmethod
    def for_app(cls, settings: Settings, redis: RedisClient | None) -> LiveSeats:
        live = cls(pubsub_client(settings, redis), settings.sse_max_streams)
        if settings.redis_cluster and redis is not None:
            live.plugin.new_client = lambda: pubsub_client(settings, redis)
        return live

    def start(self, seats: Seats) -> None:
        self._seats = seats
        self._watcher = SeatWatcher(seats, self._publish)
        self._task = asyncio.create_task(self._watcher.run(), name="live-seats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=RELEASE_WAIT_S)
        await self._client.aclose()

    @property
    def full(self) -> bool:
        """No more streams here (the client polls `/seats` instead). The count grows as a
        stream starts, so a burst of opens may pass the limit by the few in flight."""
        return self.streams >= self.max_streams

    def channel(self, course_id: int) -> str:
        return channel_name(self._db, course_id)

    async def states(self, course_ids: Sequence[int]) -> list[SeatState]:
        """The state of each course, in the order asked (each once); NotFound for an id no
        course has."""
        found = await read_states(self._started_seats(), course_ids)
        for cid in course_ids:
            if cid not in found:
                raise NotFound(f"No course with id {cid}.")
        return [found[cid] for cid in dict.fromkeys(course_ids)]

    def stream(self, snapshot: Sequence[SeatState]) -> LiveStream:
        """A stream that starts from `snapshot` (from `states`); use it as `with stream:`."""
        return LiveStream(self, snapshot)

    def _publish_all_again(self) -> None:
        if self._watcher is not None:
            self._watcher.again_all()

    def _started_seats(self) -> Seats:
        if self._seats is None:
            raise RuntimeError("LiveSeats.start was not called")
        return self._seats

    def _watcher_of(self) -> SeatWatcher:
        if self._watcher is None:
            raise RuntimeError("LiveSeats.start was not called")
        return self._watcher

    async def _publish(self, payload: bytes, course_id: int) -> None:
        await self.plugin.wait_published(payload, self.channel(course_id))

    def _opened(self, stream: LiveStream) -> None:
        self.streams += 1
        STREAMS.inc()
        self._watcher_of().watch(stream.course_ids)

    def _closed(self, stream: LiveStream) -> None:
        self.streams -= 1
        STREAMS.dec()
        self._watcher_of().unwatch(stream.course_ids)

    async def _subscribe(self, course_id: int) -> Subscriber:
        async with self._pubsub_lock:
            subscriber = await self.plugin.subscribe(self.channel(course_id))
        self.subscribers += 1
        SUBSCRIBERS.inc()
        return subscriber

    def _release(self, subscribing: asyncio.Future[None],
                 subscribers: list[tuple[int, Subscriber]]) -> None:
        """Unsubscribe, in a task of its own, once the subscribing is over (synchronous, so a
        cancelled stream cannot skip it)."""
        try:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(subscribing,
                                                                            subscribers))
        except RuntimeError:  # no loop: the process is going, and its connection with it
            return
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _unsubscribe(self, subscribing: asyncio.Future[None],
                           subscribers: list[tuple[int, Subscriber]]) -> None:
        await asyncio.wait([subscribing])
        for course_id, subscriber in subscribers:
            try:
                if self.plugin.closing:  # streams cut by a shutdown: nothing to undo
                    continue
                async with self._pubsub_lock:
                    await self.plugin.unsubscribe(subscriber, self.channel(course_id))
            except Exception as exc:
                log.warning("live seats: unsubscribe failed: %s: %s", type(exc).__name__, exc)
            finally:
                self.subscribers -= 1
                SUBSCRIBERS.dec()


class LiveStream:
    """One client's live view of some courses. `snapshot` is what to send first; then iterate
    it: each item is a list of event payloads to send, or None when a heartbeat is due."""

    def __init__(self, hub: LiveSeats, snapshot: Sequence[SeatState]) -> None:
        self._hub = hub
        self.course_ids = [state.course_id for state in snapshot]
        self.snapshot = [state.encode() for state in snapshot]
        now = asyncio.get_running_loop().time()
        self._sent = dict(zip(self.course_ids, self.snapshot, strict=True))
        self._sent_at = dict.fromkeys(self.course_ids, now)
        self._last_write = now
        self._pending: dict[int, bytes] = {}  # course id -> newest state not sent yet
        self._wake = asyncio.Event()
        self._subscribing: asyncio.Future[None] | None = None
        self._subscribers: list[tuple[int, Subscriber]] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._opened = self._closed = False

    def __enter__(self) -> LiveStream:
        self._hub._opened(self)
        self._opened = True
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Synchronous on purpose (see the module's docstring); safe to call twice."""
        if not self._opened or self._closed:
            return
        self._closed = True
        self._hub._closed(self)
        for pump in self._pumps:
            pump.cancel()
        if self._subscribing is not None:
            self._hub._release(self._subscribing, self._subscribers)

    def __aiter__(self) -> LiveStream:
        return self

    async def __anext__(self) -> list[bytes] | None:
        if self._subscribing is None:
            await self._subscribe()
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            due = self._take_due(now)
            if due:
                self._last_write = now
                return due
            wake_at = min([self._last_write + HEARTBEAT_S,
                           *(self._sent_at[cid] + MIN_GAP_S for cid in self._pending)])
            if wake_at <= now:
                self._last_write = now
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake_at - now):
                    await self._wake.wait()

    async def _subscribe(self) -> None:
        """Subscribe in a task of its own (a cancel here leaves it whole, for `close` to undo),
        then pump each subscriber's events into this stream and ask the watcher to publish
        these courses again, for any change between the snapshot and the subscription."""
        self._subscribing = asyncio.ensure_future(self._subscribe_all())
        try:
            await asyncio.shield(self._subscribing)
        except Exception as exc:
            log.warning("live seats: subscribe failed: %s: %s", type(exc).__name__, exc)
            raise StopAsyncIteration from exc
        self._pumps = [asyncio.create_task(self._pump(cid, subscriber))
                       for cid, subscriber in self._subscribers]
        self._hub._watcher_of().again(self.course_ids)

    async def _subscribe_all(self) -> None:
        for cid in self.course_ids:
            if self._closed:
                return
            self._subscribers.append((cid, await self._hub._subscribe(cid)))

    async def _pump(self, course_id: int, subscriber: Subscriber) -> None:
        async for payload in subscriber.iter_events():
            self._offer(course_id, payload)

    def _offer(self, course_id: int, payload: bytes) -> None:
        """A course's newest state: pending unless it is what the client already has."""
        if payload == self._sent.get(course_id):
            self._pending.pop(course_id, None)
            return
        self._pending[course_id] = payload
        self._wake.set()

    def _take_due(self, now: float) -> list[bytes]:
        due = [cid for cid in self._pending if self._sent_at[cid] + MIN_GAP_S <= now]
        for cid in due:
            self._sent[cid] = self._pending.pop(cid)
            self._sent_at[cid] = now
        return [self._sent[cid] for cid in due]

