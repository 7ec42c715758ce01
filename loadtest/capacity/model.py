"""The discrete-event model of the release path (SimPy).

What it models, hop by hop, and why each piece looks the way it does:

- `Cpu`: cores shared by processor sharing among the jobs runnable on them (each job gets
  min(per_job, cores / jobs) of a core), which is what an OS scheduler gives processes on
  average. On the one box every process (app workers, Redis, Postgres's backends, wrk's
  threads) runs its jobs on the same `Cpu`, so their contention is the model's, not a guess.
- `Loop`: one single-threaded process, an app worker's asyncio loop or a wrk thread. It runs its
  ready steps in arrival order, a chunk of up to `chunk_s` of CPU at a time (one loop turn), and
  a request is a chain of steps separated by round trips, as a coroutine is between awaits.
- `GcPauses`: CPython's full (generation 2) garbage collection in an app worker. It runs inside
  whatever step allocates, so the whole loop stops for it: every request the worker holds waits
  the pause out. That, not queueing, is what makes a worker's answers' long tail.
- `Batcher`: booking/core/batching.py's MicroBatcher (flushers that each take everything queued
  and wait for their round trip before taking more), for the rate-limit checks, the gate's
  grabs and the ledger's group commit.
- `RedisShard`: one single-threaded Redis; each turn runs every pipeline that arrived, one script
  call after another, and decides the seats in that order (the gate is exact, not sampled).
- `Postgres`: one transaction per commit batch on a backend of its own, CPU per booking row.
- `Haproxy`: leastconn over the app servers, a per-server maxconn, one queue with a timeout.
- `WrkCrowd` is `booking bench`'s wrk (bench_rush.lua's residents, closed loop over its
  connections); `Residents` is a city's crowd (each arrives at the opening plus a spread, then
  sends its grabs and refreshes one after another, a think time after each answer).

A model run can stand for a slice of a bigger system (see `Scale`): one app worker of m
identical ones with 1/m of the crowd and 1/m of each store, so a city-size release runs in
seconds; utilisations and queueing are kept, the seats per course are rounded per course.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import simpy

CHUNK_S = 0.001  # one asyncio loop turn runs at most this much CPU before answers go out
FIRST_SHARE = 0.6  # share of a request's app CPU spent before its first await (parse, token)
RATE_LIMIT_CALLS = 2  # ratelimit.lua per grab: per resident and per address


class Clock:
    """The SimPy environment, and the one way the model schedules work: a call after a delay."""

    def __init__(self) -> None:
        self.env = simpy.Environment()

    @property
    def now(self) -> float:
        return self.env.now

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        event = self.env.timeout(delay)
        event.callbacks.append(lambda _event: fn(*args))

    def run(self, until: float | None = None) -> None:
        self.env.run(until)


class Cpu:
    """Cores shared by processor sharing among the runnable jobs: each gets
    min(per_job, cores / jobs) of a core. `used` holds the core-seconds each owner got."""

    def __init__(self, clock: Clock, cores: float, per_job: float = 1.0) -> None:
        self.clock, self.cores, self.per_job = clock, cores, per_job
        self.jobs: list[list[Any]] = []  # [remaining work, owner, fn, args]
        self.used: dict[str, float] = {}
        self._stamp = 0.0
        self._version = 0

    def run(self, work: float, owner: str, fn: Callable[..., None], *args: Any) -> None:
        """Call fn(*args) once `work` CPU-seconds of a job of `owner` are done."""
        if work <= 0:
            self.clock.after(0, fn, *args)
            return
        self._advance()
        self.jobs.append([work, owner, fn, args])
        self._plan()

    def _rate(self) -> float:
        return min(self.per_job, self.cores / len(self.jobs)) if self.jobs else 0.0

    def _advance(self) -> None:
        now = self.clock.now
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed <= 0 or not self.jobs:
            return
        done = elapsed * self._rate()
        used = self.used
        for job in self.jobs:
            job[0] -= done
            used[job[1]] = used.get(job[1], 0.0) + done

    def _plan(self) -> None:
        self._version += 1
        if self.jobs:
            least = min(job[0] for job in self.jobs)
            self.clock.after(max(least, 0.0) / self._rate(), self._tick, self._version)

    def _tick(self, version: int) -> None:
        if version != self._version:
            return  # a job came or went since this was planned
        self._advance()
        finished = [job for job in self.jobs if job[0] <= 1e-12]
        self.jobs = [job for job in self.jobs if job[0] > 1e-12]
        self._plan()
        for _, _, fn, args in finished:
            fn(*args)


class Loop:
    """A single-threaded process: its ready steps run in order, up to `chunk_s` CPU a turn."""

    def __init__(self, clock: Clock, cpu: Cpu, owner: str, chunk_s: float = CHUNK_S) -> None:
        self.clock, self.cpu, self.owner, self.chunk_s = clock, cpu, owner, chunk_s
        self.ready: deque[tuple[float, Callable[..., None], tuple[Any, ...]]] = deque()
        self.running = False

    def push(self, cost: float, fn: Callable[..., None], *args: Any) -> None:
        self.ready.append((cost, fn, args))
        if not self.running:
            self.running = True
            self.clock.after(0, self._turn)

    def stop_the_world(self, cost: float) -> None:
        """`cost` of CPU before any step that is ready: a pause inside the running step (a
        garbage collection), which every request waiting on this loop waits out."""
        self.ready.appendleft((cost, _nothing, ()))
        if not self.running:
            self.running = True
            self.clock.after(0, self._turn)

    def _turn(self) -> None:
        chunk, total = [], 0.0
        ready = self.ready
        while ready and total < self.chunk_s:
            step = ready.popleft()
            chunk.append(step)
            total += step[0]
        self.cpu.run(total, self.owner, self._done, chunk)

    def _done(self, chunk: list[tuple[float, Callable[..., None], tuple[Any, ...]]]) -> None:
        for _, fn, args in chunk:
            fn(*args)
        if self.ready:
            self._turn()
        else:
            self.running = False


def _nothing() -> None:
    return None


Flush = Callable[[list[Any], Callable[[], None]], None]


class Batcher:
    """MicroBatcher: `flushers` flushers, each takes what is queued (up to max_batch), hands it
    to `flush` and takes more once flush calls back. The flushers are tasks of the worker's
    loop: a woken flusher, like a reply it reads, waits for its turn behind every step ready
    before it, which is what makes batches grow with the load."""

    def __init__(self, loop: Loop, flushers: int, max_batch: int, flush: Flush) -> None:
        self.loop, self.max_batch, self.flush = loop, max_batch, flush
        self.queue: list[Any] = []
        self.idle = flushers

    def submit(self, item: Any) -> None:
        self.queue.append(item)
        if self.idle:
            self.idle -= 1
            self.loop.push(0.0, self._take)

    def _take(self) -> None:
        if not self.queue:
            self.idle += 1
            return
        batch = self.queue[:self.max_batch]
        del self.queue[:self.max_batch]
        self.flush(batch, self._take)


class RedisShard:
    """One single-threaded Redis: a turn runs every pipeline that has arrived, `per_call` CPU
    per script call, and calls `at_redis` of each in that order (seat decisions happen there)."""

    def __init__(self, clock: Clock, cpu: Cpu, per_call: float, half_rtt: float) -> None:
        self.clock, self.cpu, self.per_call, self.half_rtt = clock, cpu, per_call, half_rtt
        self.inbox: list[tuple[int, Callable[..., Any] | None, Callable[..., None], Any]] = []
        self.busy = False
        self.calls = 0

    def send(self, calls: int, at_redis: Callable[..., Any] | None,
             reply: Callable[..., None], arg: Any) -> None:
        """A pipeline of `calls` script calls; reply(arg, at_redis(arg)) a round trip later."""
        self.clock.after(self.half_rtt, self._arrive, (calls, at_redis, reply, arg))

    def _arrive(self, item: tuple[int, Callable[..., Any] | None, Callable[..., None],
                                  Any]) -> None:
        self.inbox.append(item)
        if not self.busy:
            self.busy = True
            self._turn()

    def _turn(self) -> None:
        items, self.inbox = self.inbox, []
        calls = sum(item[0] for item in items)
        self.calls += calls
        self.cpu.run(calls * self.per_call, "redis", self._done, items)

    def _done(self, items: list[tuple[int, Callable[..., Any] | None, Callable[..., None],
                                      Any]]) -> None:
        for _, at_redis, reply, arg in items:
            result = at_redis(arg) if at_redis is not None else None
            self.clock.after(self.half_rtt, reply, arg, result)
        if self.inbox:
            self._turn()
        else:
            self.busy = False


class Postgres:
    """The ledger: one transaction per commit batch, on a backend of its own (a pool
    connection), `per_row` CPU per booking."""

    def __init__(self, clock: Clock, cpu: Cpu, per_row: float, half_rtt: float) -> None:
        self.clock, self.cpu, self.per_row, self.half_rtt = clock, cpu, per_row, half_rtt
        self.rows = 0
        self.transactions = 0

    def commit(self, rows: int, reply: Callable[..., None], arg: Any) -> None:
        self.clock.after(self.half_rtt, self._start, rows, reply, arg)

    def _start(self, rows: int, reply: Callable[..., None], arg: Any) -> None:
        self.rows += rows
        self.transactions += 1
        self.cpu.run(rows * self.per_row, "postgres", self.clock.after, self.half_rtt,
                     reply, arg)


@dataclass(frozen=True)
class Costs:
    """CPU seconds per unit of work (calibrate.py derives them from a bench)."""

    memory_no: float  # app CPU of a sold-out answered from the worker's memory
    gate_no: float  # app CPU of a sold-out the gate answered (gate call + look, learn)
    full_grab: float  # app CPU of a grab that took a seat (gate, commit, settle, 201)
    course_read: float  # app CPU of a course read (its seats_left from Redis)
    filler: float  # app CPU of wrk's /health filler (the bare stack)
    redis_call: float  # Redis CPU per script call
    pg_row: float  # Postgres CPU per confirmed booking
    client: float = 0.0  # load generator CPU per answer (wrk, on the one box only)
    gc_pause: float = 0.0  # app CPU of one full garbage collection (the worker's loop stops)
    gc_every: int = 0  # requests a worker takes in between two full collections (0: none)

    def with_full_grab(self, full_grab: float) -> Costs:
        """These costs with a full grab `full_grab` times as dear."""
        return replace(self, full_grab=self.full_grab * full_grab)


@dataclass(frozen=True)
class Scale:
    """A run standing for a slice of a bigger system: `slices` identical app workers share the
    stores (each store's capacity divided among them), and each simulated resident stands for
    1/`sample` residents (costs divided by `sample`: fewer requests, each dearer)."""

    slices: int = 1
    sample: float = 1.0


@dataclass(frozen=True)
class Layout:
    """Machines and their parameters. `one_box`: the app workers, Redis, Postgres and the load
    generator share one CPU of `box_cores`; else each app machine has `app_cores` for its own
    workers, each Redis shard a core, Postgres `pg_cores` of its own."""

    app_machines: int = 1
    workers: int = 2  # per app machine
    one_box: bool = True
    box_cores: float = 2.0
    app_cores: float = 2.0
    redis_shards: int = 1
    pg_cores: float = 2.0
    rtt_s: float = 0.00005  # one round trip on each hop (client-app, app-Redis, app-Postgres)
    haproxy: bool = False
    maxconn: int = 128  # per app server (HAProxy's per-server maxconn)
    queue_timeout_s: float = 30.0
    memory_share: float = 0.8  # share of sold-out answers a worker gives from its memory
    rate_limits: bool = True
    scale: Scale = field(default_factory=Scale)


class Request:
    __slots__ = ("attempt", "conn", "course", "kind", "resident", "sent_at", "status", "worker")

    def __init__(self, kind: str, resident: int, attempt: int, course: int, conn: Any) -> None:
        self.kind, self.resident, self.attempt, self.course = kind, resident, attempt, course
        self.conn = conn
        self.sent_at = 0.0
        self.status = 0
        self.worker: App | None = None


class Seats:
    """The gate's truth: seats left per course, decided inside Redis's turns, and the courses
    not sold out yet (what residents watching live seat counts choose from). A slice's share of
    a course's seats is rounded per course up front (`capacities`)."""

    def __init__(self, capacities: list[int]) -> None:
        self.left = list(capacities)
        self.unsold = [c for c, n in enumerate(capacities) if n > 0]
        self._where = {c: i for i, c in enumerate(self.unsold)}
        self.total = sum(capacities)
        self.taken = 0

    def take(self, course: int) -> bool:
        if self.left[course] <= 0:
            return False
        self.left[course] -= 1
        self.taken += 1
        if self.left[course] == 0:
            i = self._where.pop(course)
            last = self.unsold.pop()
            if last != course:
                self.unsold[i] = last
                self._where[last] = i
        return True

    def sold_out(self, course: int) -> bool:
        return self.left[course] <= 0


class Figures:
    """What a run saw: latencies of every answer, decisions, confirmations, times."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.decisions = 0
        self.confirmed = 0
        self.from_memory = 0
        self.gate_no = 0
        self.reads = 0
        self.rejected = 0  # HAProxy's 503: waited past the queue timeout
        self.last_answer = 0.0
        self.sellout_at: float | None = None

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Model:
    """One run: build with a layout, costs and a crowd, `run()`, then read `figures`."""

    def __init__(self, layout: Layout, costs: Costs, capacities: list[int],
                 seed: int = 1) -> None:
        self.layout, self.costs = layout, costs
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.seats = Seats(capacities)
        self.committed = 0  # booking rows Postgres committed
        self.figures = Figures()
        self.half_rtt = layout.rtt_s / 2
        self.cpus: list[Cpu] = []
        self._build_stores()
        self.apps = self._build_apps()
        self.haproxy = Haproxy(self) if layout.haproxy else None

    def _build_stores(self) -> None:
        layout, costs, scale = self.layout, self.costs, self.layout.scale
        share = scale.sample / scale.slices  # of each store's capacity, in this run's time
        if layout.one_box:
            self.box = Cpu(self.clock, layout.box_cores)
            self.cpus.append(self.box)
            redis_cpus = [self.box]
            pg_cpu = self.box
        else:
            redis_cpus = [Cpu(self.clock, share, share) for _ in range(layout.redis_shards)]
            pg_cpu = Cpu(self.clock, layout.pg_cores * share, share)
            self.cpus += [*redis_cpus, pg_cpu]
        self.redis = [RedisShard(self.clock, cpu, costs.redis_call, self.half_rtt)
                      for cpu in redis_cpus]
        self.postgres = Postgres(self.clock, pg_cpu, costs.pg_row, self.half_rtt)
        self.redis_cpus, self.pg_cpu = redis_cpus, pg_cpu

    def _build_apps(self) -> list[App]:
        layout, sample = self.layout, self.layout.scale.sample
        apps = []
        for _ in range(layout.app_machines):
            if layout.one_box:
                cpu = self.box
            else:
                cpu = Cpu(self.clock, layout.app_cores * sample, sample)
                self.cpus.append(cpu)
            apps += [App(self, cpu) for _ in range(layout.workers)]
        return apps

    def shard(self, key: int) -> RedisShard:
        return self.redis[key % len(self.redis)]

    def answer(self, request: Request, status: int) -> None:
        """The answer leaves the worker; the client (or HAProxy) has it half a round trip
        later."""
        request.status = status
        self.clock.after(self.half_rtt, self._answered, request)

    def _answered(self, request: Request) -> None:
        if self.haproxy is not None:
            self.haproxy.done(request)
        request.conn.answered(request)

    def record(self, request: Request) -> None:
        """Count an answer the client has seen, with its latency."""
        figures = self.figures
        figures.latencies.append(self.clock.now - request.sent_at)
        figures.last_answer = self.clock.now
        if request.kind == "g" and request.status in (201, 409):
            figures.decisions += 1
            figures.confirmed += request.status == 201
        elif request.kind == "r":
            figures.reads += 1
        elif request.status == 503:
            figures.rejected += 1

    def send(self, request: Request, app: App | None = None) -> None:
        """A client sends: through HAProxy if there is one, else to the given worker."""
        request.sent_at = self.clock.now
        if self.haproxy is not None:
            self.haproxy.arrive(request)
        else:
            assert app is not None
            self.clock.after(self.half_rtt, app.receive, request)

    def utilisation(self, owner: str, cpus: list[Cpu], duration: float) -> float:
        """Mean share of those CPUs' capacity that `owner` used over `duration`."""
        capacity = sum(cpu.cores for cpu in cpus) * duration
        used = sum(cpu.used.get(owner, 0.0) for cpu in cpus)
        return used / capacity if capacity > 0 else 0.0

    def demand_s(self) -> float:
        """Core-seconds every owner got so far, on every CPU of the model."""
        return sum(sum(cpu.used.values()) for cpu in {id(c): c for c in self.cpus}.values())


class App:
    """One app worker: the grab, read and filler paths as chains of steps on its loop."""

    def __init__(self, model: Model, cpu: Cpu) -> None:
        self.model = model
        layout, costs, clock = model.layout, model.costs, model.clock
        sample = layout.scale.sample if not layout.one_box else 1.0
        self.loop = Loop(clock, cpu, "app", CHUNK_S / sample)
        self.costs = costs
        self.active = 0  # requests in this worker (HAProxy's leastconn counts per server)
        self.limits = Batcher(self.loop, 1, 512, self._flush_limits)
        self.gate = Batcher(self.loop, 1, 512, self._flush_grabs)
        self.ledger = Batcher(self.loop, 3, 1000, self._flush_commits)
        self.gc = GcPauses(self.loop, costs, sample, model.rng)

    # --- arrival ------------------------------------------------------------------------------

    def receive(self, request: Request) -> None:
        request.worker = self
        self.gc.took_request()
        costs = self.costs
        if request.kind == "g":
            self.loop.push(costs.memory_no * FIRST_SHARE, self._parsed, request)
        elif request.kind == "r":
            self.loop.push(costs.course_read * FIRST_SHARE, self._read, request)
        else:
            self.loop.push(costs.filler, self.model.answer, request, 200)

    # --- a grab -------------------------------------------------------------------------------

    def _parsed(self, request: Request) -> None:
        if self.model.layout.rate_limits:
            self.limits.submit(request)
        else:
            self._limited(request)

    def _limited(self, request: Request) -> None:
        self.loop.push(self.costs.memory_no * (1 - FIRST_SHARE), self._decide, request)

    def _decide(self, request: Request) -> None:
        model = self.model
        if (model.seats.sold_out(request.course)
                and model.rng.random() < model.layout.memory_share):
            model.figures.from_memory += 1
            model.answer(request, 409)
        else:
            self.gate.submit(request)

    def _gated(self, request: Request, taken: bool) -> None:
        extra = (self.costs.full_grab if taken else self.costs.gate_no) - self.costs.memory_no
        if taken:
            self.loop.push(extra / 2, self.ledger.submit, request)
        else:
            self.model.figures.gate_no += 1
            self.loop.push(extra / 2, self._learn, request)

    def _learn(self, request: Request) -> None:
        """After the gate's sold_out, the worker looks again (refusing.lua) to remember it."""
        self.model.shard(request.course).send(1, None, self._learnt, request)

    def _learnt(self, request: Request, _: object) -> None:
        extra = self.costs.gate_no - self.costs.memory_no
        self.loop.push(extra / 2, self.model.answer, request, 409)

    def _committed(self, request: Request) -> None:
        extra = self.costs.full_grab - self.costs.memory_no
        self.loop.push(extra / 2, self.model.answer, request, 201)

    # --- a course read ------------------------------------------------------------------------

    def _read(self, request: Request) -> None:
        self.model.shard(request.course).send(1, None, self._read_back, request)

    def _read_back(self, request: Request, _: object) -> None:
        self.loop.push(self.costs.course_read * (1 - FIRST_SHARE), self.model.answer,
                       request, 200)

    # --- the batchers' round trips ------------------------------------------------------------

    def _flush_limits(self, batch: list[Request], done: Callable[[], None]) -> None:
        groups = _by_shard(self.model, batch, lambda r: r.resident)
        waiting = [len(groups)]

        def back(requests: list[Request], _: object) -> None:
            for request in requests:
                self._limited(request)
            waiting[0] -= 1
            if not waiting[0]:
                done()

        for shard, requests in groups.items():
            shard.send(RATE_LIMIT_CALLS * len(requests), None, self._on_loop, (back, requests))

    def _flush_grabs(self, batch: list[Request], done: Callable[[], None]) -> None:
        groups = _by_shard(self.model, batch, lambda r: r.course)
        waiting = [len(groups)]
        seats = self.model.seats

        def decide(requests: list[Request]) -> list[bool]:
            return [seats.take(request.course) for request in requests]

        def back(requests: list[Request], taken: list[bool]) -> None:
            for request, took in zip(requests, taken, strict=True):
                self._gated(request, took)
            waiting[0] -= 1
            if not waiting[0]:
                done()

        for shard, requests in groups.items():
            shard.send(len(requests), lambda pair: decide(pair[1]), self._on_loop,
                       (back, requests))

    def _flush_commits(self, batch: list[Request], done: Callable[[], None]) -> None:
        """One transaction for the batch, then the settle pipeline (pending marks cleared),
        then every grab of the batch is answered (BookingLedger._write)."""
        model = self.model

        def committed(requests: list[Request]) -> None:
            groups = _by_shard(model, requests, lambda r: r.course)
            waiting = [len(groups)]

            def settled(part: list[Request], _: object) -> None:
                for request in part:
                    self._committed(request)
                waiting[0] -= 1
                if not waiting[0]:
                    done()

            for shard, part in groups.items():
                shard.send(len(part), None, self._on_loop, (settled, part))

        model.committed += len(batch)  # the bench's sell-out: the last row's transaction start
        if model.committed == model.seats.total:
            model.figures.sellout_at = model.clock.now + model.half_rtt
        model.postgres.commit(len(batch), self._on_loop, (lambda part, _: committed(part),
                                                          batch))

    def _on_loop(self, pair: tuple[Callable[..., None], Any], result: object = None) -> None:
        """A flusher's reply is read by the worker's loop, in its turn."""
        fn, arg = pair
        self.loop.push(0.0, fn, arg, result)


class GcPauses:
    """CPython's full garbage collections in one worker. CPython 3.11 collects generation 0
    after 700 net allocations of container objects, generation 1 after 10 of those, and all
    three after 10 of those whenever the objects that outlived two collections grew by a quarter
    since the last full one; a busy worker's requests in flight always do, so a full collection
    comes every 121 young ones: every `gc_every` requests, as measured. It walks the whole heap
    (about 120,000 objects in a worker: `gc_pause` of CPU), inside whatever step allocated, so
    the loop stops. A sampled run (each request standing for 1/sample) has one every
    gc_every x sample requests, gc_pause x sample of work on its slowed CPU: as long, as often.
    Each worker starts at a random point of its cycle, as real ones do."""

    def __init__(self, loop: Loop, costs: Costs, sample: float, rng: random.Random) -> None:
        self.loop = loop
        self.every = max(1, round(costs.gc_every * sample)) if costs.gc_every else 0
        self.pause = costs.gc_pause * sample
        self.left = rng.randrange(self.every) + 1 if self.every else 0
        self.pauses = 0

    def took_request(self) -> None:
        if not self.every:
            return
        self.left -= 1
        if self.left <= 0:
            self.left = self.every
            self.pauses += 1
            self.loop.stop_the_world(self.pause)


def _by_shard(model: Model, requests: list[Request],
              key: Callable[[Request], int]) -> dict[RedisShard, list[Request]]:
    if len(model.redis) == 1:
        return {model.redis[0]: requests}
    groups: dict[RedisShard, list[Request]] = {}
    for request in requests:
        groups.setdefault(model.shard(key(request)), []).append(request)
    return groups


class Haproxy:
    """leastconn over the app workers (grouped as servers of `workers` each), a per-server
    maxconn, one backend queue whose requests are answered 503 once they waited longer than
    the queue timeout (found when they reach its head)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        layout = model.layout
        self.per_worker = max(1, layout.maxconn // layout.workers)
        self.queue: deque[Request] = deque()
        self.waits = array("d")

    def arrive(self, request: Request) -> None:
        app = min(self.model.apps, key=lambda a: a.active)
        if app.active < self.per_worker:
            self._forward(app, request)
        else:
            self.queue.append(request)

    def _forward(self, app: App, request: Request) -> None:
        app.active += 1
        self.waits.append(self.model.clock.now - request.sent_at)
        self.model.clock.after(self.model.half_rtt, app.receive, request)

    def done(self, request: Request) -> None:
        app = request.worker
        if app is None:
            return  # a 503 from the queue: it held no connection
        app.active -= 1
        timeout = self.model.layout.queue_timeout_s
        now = self.model.clock.now
        while self.queue:
            queued = self.queue.popleft()
            if now - queued.sent_at <= timeout:
                self._forward(app, queued)
                return
            queued.status = 503
            queued.conn.answered(queued)


# --- crowds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchCrowd:
    """`booking bench`'s crowd (bench.py and bench_rush.lua): who rushes what, how."""

    courses: int
    seats: int
    residents: int
    connections: int = 256
    threads: int = 2
    hot_share: float = 0.9
    choices: int = 5


class WrkThread:
    """One wrk thread running bench_rush.lua: its residents in order, a resident told sold_out
    moves on (up to `choices` courses) to one this thread has not heard is sold out."""

    def __init__(self, crowd: WrkCrowd, index: int) -> None:
        plan = crowd.plan
        share = math.ceil(plan.residents / plan.threads)
        self.crowd = crowd
        self.next_resident = index * share + 1
        self.last_resident = min(plan.residents, (index + 1) * share)
        self.retry: list[tuple[int, int]] = []
        self.sold = [False] * plan.courses
        self.sold_count = 0
        self.outstanding = 0
        self.finished = False
        self.loop = Loop(crowd.model.clock, crowd.cpu, "client")

    def choice(self, resident: int, attempt: int) -> int:
        plan = self.crowd.plan
        h = (resident * 2654435761 + attempt * 40503) % 4294967296
        pick = h // 10000
        if attempt == 1 and (h % 10000) / 10000 < plan.hot_share:
            return pick % self.crowd.hot
        start = pick % plan.courses
        if self.sold_count >= plan.courses:
            return start
        for step in range(plan.courses):
            course = (start + step) % plan.courses
            if not self.sold[course]:
                return course
        return start

    def next_request(self, conn: WrkConnection) -> Request | None:
        if self.finished:
            return None
        if self.retry:
            resident, attempt = self.retry.pop()
        elif self.next_resident <= self.last_resident:
            resident, attempt = self.next_resident, 1
            self.next_resident += 1
        else:
            return Request("h", 0, 0, 0, conn)
        self.outstanding += 1
        return Request("g", resident, attempt, self.choice(resident, attempt), conn)

    def handle(self, request: Request) -> None:
        if request.kind == "g":
            self.outstanding -= 1
            if request.status == 409:
                if not self.sold[request.course]:
                    self.sold[request.course] = True
                    self.sold_count += 1
                if request.attempt < self.crowd.plan.choices:
                    self.retry.append((request.resident, request.attempt + 1))
        if (not self.finished and self.outstanding == 0 and not self.retry
                and self.next_resident > self.last_resident):
            self.finished = True
            self.crowd.thread_done()


class WrkConnection:
    def __init__(self, thread: WrkThread, app: App) -> None:
        self.thread, self.app = thread, app

    def start(self) -> None:
        self._send()

    def _send(self) -> None:
        request = self.thread.next_request(self)
        if request is not None:
            self.thread.crowd.model.send(request, self.app)

    def answered(self, request: Request) -> None:
        self.thread.loop.push(self.thread.crowd.model.costs.client, self._read, request)

    def _read(self, request: Request) -> None:
        if self.thread.finished:
            return
        self.thread.crowd.model.record(request)
        self.thread.handle(request)
        self._send()


class WrkCrowd:
    """wrk's threads and connections (connection i to worker i mod workers), on the box."""

    def __init__(self, model: Model, plan: BenchCrowd) -> None:
        self.model, self.plan = model, plan
        self.cpu = model.box
        self.hot = max(1, plan.courses // 10)
        self.threads = [WrkThread(self, t) for t in range(plan.threads)]
        per_thread = plan.connections // plan.threads
        self.connections = [WrkConnection(self.threads[t], model.apps[(t * per_thread + i)
                                                                      % len(model.apps)])
                            for t in range(plan.threads) for i in range(per_thread)]
        self.done_threads = 0
        self.finished_at: float | None = None

    def start(self) -> None:
        for conn in self.connections:
            conn.start()

    def thread_done(self) -> None:
        self.done_threads += 1
        if self.done_threads == len(self.threads):
            self.finished_at = self.model.clock.now


@dataclass(frozen=True)
class CityCrowd:
    """A city's release: residents arrive at the opening plus a spread (uniform), each then
    sends its steps one after another, `think_s` after each answer: `grabs` grabs at most
    (moving on at sold_out to a course not yet sold out, stopping at a seat) and `reads`
    course reads, interleaved (read, grab, read, grab, ..., then the reads left)."""

    residents: int
    courses: int
    seats: int
    grabs: int
    reads: int
    spread_s: float = 10.0
    think_s: float = 1.0
    hot_share: float = 0.9

    def steps(self) -> str:
        pairs = "".join("rg" if i < self.reads else "g" for i in range(self.grabs))
        return pairs + "r" * max(0, self.reads - self.grabs)


class Resident:
    __slots__ = ("crowd", "got_seat", "grabs", "index", "step")

    def __init__(self, crowd: Residents, index: int) -> None:
        self.crowd, self.index = crowd, index
        self.step = 0
        self.grabs = 0
        self.got_seat = False

    def go(self) -> None:
        crowd = self.crowd
        steps = crowd.steps
        while self.step < len(steps) and steps[self.step] == "g" and self.got_seat:
            self.step += 1  # a resident with a seat grabs no more
        if self.step >= len(steps):
            return
        kind = steps[self.step]
        self.step += 1
        if kind == "g":
            self.grabs += 1
            course = crowd.choose(self.grabs)
        else:
            course = crowd.rng.randrange(crowd.plan.courses)
        crowd.model.send(Request(kind, self.index, self.grabs, course, self))

    def answered(self, request: Request) -> None:
        crowd = self.crowd
        crowd.model.record(request)
        if request.status == 201:
            self.got_seat = True
        crowd.model.clock.after(crowd.plan.think_s, self.go)


class Residents:
    """The city's crowd (see CityCrowd), sent through HAProxy."""

    def __init__(self, model: Model, plan: CityCrowd, residents: int) -> None:
        self.model, self.plan = model, plan
        self.rng = model.rng
        self.steps = plan.steps()
        self.hot = max(1, plan.courses // 10)
        self.count = residents

    def start(self) -> None:
        for index in range(self.count):
            self.model.clock.after(self.rng.uniform(0, self.plan.spread_s),
                                   Resident(self, index).go)

    def choose(self, attempt: int) -> int:
        """A first grab aims at the hottest tenth most of the time; later ones at a course
        the resident can see is not sold out (live seat counts), any if none is left."""
        if attempt == 1 and self.rng.random() < self.plan.hot_share:
            return self.rng.randrange(self.hot)
        unsold = self.model.seats.unsold
        return self.rng.choice(unsold) if unsold else self.rng.randrange(self.plan.courses)


def capacities(courses: int, seats_per_course: float, rng: random.Random) -> list[int]:
    """Whole seats per course; a fractional share (a slice) rounded per course at random, so
    the total is right on average."""
    whole = math.floor(seats_per_course)
    part = seats_per_course - whole
    return [whole + (rng.random() < part) for _ in range(courses)]
