"""A process answers the grabs of a course the gate just refused from memory, without Redis,
and never falsely beyond the bound: every path that frees a seat announces the course, and a
lost announcement costs at most the memory's time to live (see booking/seats/memory.py).

The memory-holding seat path runs in the test's process, beside the session's service (whose
workers hold memories of their own); seats are freed through the service, as residents and the
sweeper free them. Its time to live is a minute where only an announcement may explain that a
freed seat is grabbable at once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from conftest import (
    FAIL_INSERTS,
    OPERATOR,
    STOP_FAILING,
    Stores,
    SweeperPaused,
    cancel,
    grab,
    join_waitlist,
    make_course,
    redis_client,
    resident,
    unique,
)
from inprocess import PENDING_TIMEOUT_S, SeatPath, course_row, seat_path
from prometheus_client import REGISTRY
from redis.asyncio import Redis, RedisCluster

from booking.bookings import Grabbed
from booking.core.errors import ApiError
from booking.core.stores import node_client
from booking.ledger.commit import CommitFailed, NewBooking
from booking.seats import Outcome, SeatGate, course_keys
from booking.seats.memory import GateMemory
from booking.seats.reconcile import reconcile_course
from booking.seats.scripts import changes_channel

_markers = iter(range(1, 10**9))
PUBLISH_MARKER = "redis.call('PUBLISH', ARGV[1], ARGV[2]) return 1"  # on KEYS[1]'s server
LONG_TTL_S = 60.0  # far longer than any test: only an announcement makes the memory forget
PRICE = 4500
LAPSE = "UPDATE bookings SET expires_at = now() - interval '1 second' WHERE id = $1::uuid"


async def until(condition: Callable[[], Any], timeout: float = 20.0) -> float:
    """Poll `condition` (sync or async) until it holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if asyncio.iscoroutine(held):
            held = await held
        if held:
            return time.monotonic()
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def remembering(db: asyncpg.Pool, redis: Redis, ttl_s: float = LONG_TTL_S,
                      listen: bool = True, memory_redis: Redis | None = None,
                      ) -> AsyncIterator[tuple[SeatPath, GateMemory]]:
    """The in-process seat path with a memory, its listener subscribed (unless `listen` is
    False: then every announcement is lost to it)."""
    memory = GateMemory(memory_redis or redis, ttl_s)
    if listen:
        memory.start()
        await asyncio.wait_for(memory.subscribed.wait(), 10)
    try:
        async with seat_path(db, redis, memory=memory) as path:
            yield path, memory
    finally:
        await memory.stop()


def code_of(answer: Grabbed | ApiError) -> str:
    return "taken" if isinstance(answer, Grabbed) else answer.code


def grabs_sent_to_redis() -> float:
    """Grabs this process's gates sent to Redis (the batcher observes each pipeline's size)."""
    return REGISTRY.get_sample_value("booking_gate_batch_grabs_sum") or 0.0


def answered_from_memory(outcome: str) -> float:
    return REGISTRY.get_sample_value("booking_grabs_from_memory_total",
                                     {"outcome": outcome}) or 0.0


async def script_calls(redis: Redis) -> int:
    """Script runs Redis has served, from every client (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def ready(path: SeatPath, memory: GateMemory, course_id: int) -> None:
    """The course loaded, and every announcement so far heard: loading it may announce it, and
    an announcement heard while the memory looks at a course spoils that look."""
    await path.loader.load(course_id)
    if memory.subscribed.is_set():  # pub/sub keeps the order: a marker comes after the rest
        marker = -next(_markers)  # no course has it
        # Published by the server of the course, as its announcements are; a cluster relays it
        # to the other primaries' subscribers behind them, so wait for every copy.
        await memory.redis.eval(PUBLISH_MARKER, 1, course_keys(course_id)[0], memory.channel,
                                str(marker))
        await until(lambda: memory.recently_heard.count(marker) == memory.servers)


async def refused_and_remembered(path: SeatPath, memory: GateMemory, course_id: int,
                                 loaded: bool = False) -> None:
    if not loaded:
        await ready(path, memory, course_id)
    refused = await path.bookings.grab(course_id, unique("racer"))
    assert code_of(refused) == "sold_out"
    assert memory.remembers(course_id)
    memory.recently_heard.clear()  # from here on, what is heard came after the memory was written


async def freed_at_once(path: SeatPath, memory: GateMemory, course_id: int,
                        free: Callable[[], Awaitable[None]]) -> None:
    """The course is remembered sold out; `free` frees a seat (nobody waits); the memory forgets
    on the announcement (its time to live is a minute) and the next racer gets the seat."""
    await refused_and_remembered(path, memory, course_id)
    await free()
    await until(lambda: course_id in memory.recently_heard)
    assert not memory.remembers(course_id)
    won = await path.bookings.grab(course_id, unique("racer"))
    assert isinstance(won, Grabbed) and won.new, won


# --- answered from memory -------------------------------------------------------------------


async def test_a_sold_out_course_is_answered_from_memory_without_the_gate(db, redis):
    course_id = await course_row(db, capacity=1)
    async with remembering(db, redis) as (path, memory):
        assert isinstance(await path.bookings.grab(course_id, unique("first")), Grabbed)
        await refused_and_remembered(path, memory, course_id)
        sent, remembered = grabs_sent_to_redis(), answered_from_memory("sold_out")
        scripts_before = await script_calls(redis)
        answers = [await path.bookings.grab(course_id, unique("racer")) for _ in range(300)]
        scripts_after = await script_calls(redis)

    assert {code_of(a) for a in answers} == {"sold_out"}
    assert grabs_sent_to_redis() == sent
    assert answered_from_memory("sold_out") == remembered + 300
    # Redis ran fewer scripts meanwhile than the 300 grabs would have cost (the service's
    # sweepers run a few a second).
    assert scripts_after - scripts_before < 300


async def test_concurrent_refusals_of_a_course_look_at_it_once(db, redis):
    course_id = await course_row(db, capacity=1)
    looks, paused, go_on = [], asyncio.Event(), asyncio.Event()

    async def hold_the_look(cid: int) -> None:
        looks.append(cid)
        paused.set()
        await go_on.wait()

    async with remembering(db, redis) as (path, memory):
        assert isinstance(await path.bookings.grab(course_id, unique("first")), Grabbed)
        await ready(path, memory, course_id)
        memory.before_remembering = hold_the_look
        first = asyncio.create_task(path.bookings.grab(course_id, unique("racer")))
        await asyncio.wait_for(paused.wait(), 10)
        others = await asyncio.gather(*(path.bookings.grab(course_id, unique("racer"))
                                        for _ in range(20)))
        go_on.set()
        assert code_of(await first) == "sold_out"
        assert memory.remembers(course_id)

    assert {code_of(a) for a in others} == {"sold_out"}
    assert looks == [course_id]


async def test_a_holders_repeated_grab_gets_its_booking_back(db, redis):
    course_id = await course_row(db, capacity=1)
    holder = unique("holder")
    async with remembering(db, redis) as (path, memory):
        first = await path.bookings.grab(course_id, holder)
        await refused_and_remembered(path, memory, course_id)
        sent = grabs_sent_to_redis()
        again = await path.bookings.grab(course_id, holder)
        assert memory.remembers(course_id)

    assert isinstance(first, Grabbed) and isinstance(again, Grabbed)
    assert (again.new, again.booking.id) == (False, first.booking.id)
    assert grabs_sent_to_redis() == sent + 1  # the holder's grab asked the gate


async def test_the_service_answers_sold_out_from_memory_and_holders_with_their_booking(http):
    course = await make_course(http, capacity=1)
    holder = unique("holder")
    taken = await grab(http, course["id"], holder)
    assert taken.status_code == 201, taken.text
    before = await service_memory_answers(http)

    async def answered_from_a_workers_memory() -> bool:
        refused = await grab(http, course["id"], unique("racer"))
        assert (refused.status_code, refused.json()["code"]) == (409, "sold_out")
        return await service_memory_answers(http) > before

    await until(answered_from_a_workers_memory)
    for _ in range(4):  # whichever worker answers, and whatever it remembers
        again = await grab(http, course["id"], holder)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == taken.json()["id"]


async def service_memory_answers(http) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(r'^booking_grabs_from_memory_total\{outcome="sold_out"\} ([0-9.e+]+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


# --- every freeing path announces -----------------------------------------------------------


async def test_the_scripts_announce_exactly_the_changes_that_can_open_a_seat(db, redis):
    """Each gate step on a course, and whether it published the course: read up to a marker
    published after the step (pub/sub keeps the order), so a silent step is seen as silent."""
    gate = SeatGate(redis)
    course_id = await course_row(db, capacity=1)
    # Subscribed on the course's server, the marker published by it: their order is kept.
    server = course_server(redis, course_id)
    pubsub = server.pubsub()
    await pubsub.subscribe(changes_channel(redis))
    async def announced(step: Awaitable[Any]) -> bool:
        await step
        marker = str(-next(_markers))
        await redis.eval(PUBLISH_MARKER, 1, course_keys(course_id)[0], changes_channel(redis),
                         marker)
        seen, deadline = False, time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the marker never came"
            message = await pubsub.get_message(timeout=1)
            if message is None or message["type"] != "message":
                continue
            if message["data"] == marker:
                return seen
            seen = seen or message["data"] == str(course_id)

    def load() -> Awaitable[Any]:
        return reconcile_course(db, gate, course_id, PENDING_TIMEOUT_S)

    ghost, ghost_booking = unique("ghost"), str(uuid.uuid4())
    try:
        async with SweeperPaused(redis):  # no round of the service's syncs this course meanwhile
            steps = {
                "first load": await announced(load()),
                "sync with nothing to change": await announced(load()),
                "grab taking the seat": await announced(gate.grab(course_id, ghost,
                                                                  ghost_booking)),
                "grab refused": await announced(gate.grab(course_id, unique("r"), "x")),
                "waitlist join": await announced(gate.wait(course_id, "waiter", 7)),
                "free of no seat": await announced(gate.free(course_id, "nobody", "x")),
            }
            freed, promoted = await gate.free(course_id, ghost, ghost_booking)
            steps["free promoting the waiter"] = await announced(asyncio.sleep(0))
            assert freed and [p.resident_id for p in promoted] == ["waiter"]
            steps["promotion undone"] = await announced(gate.unpromote(promoted[0]))
            steps["last waiter leaves, a seat free"] = await announced(
                gate.leave_waitlist(course_id, "waiter"))
            steps["grab again"] = await announced(gate.grab(course_id, ghost, ghost_booking))
            await gate.wait(course_id, "waiter-2", 8)
            steps["last waiter leaves, no seat free"] = await announced(
                gate.leave_waitlist(course_id, "waiter-2"))
            steps["free by the holder"] = await announced(gate.free(course_id, ghost,
                                                                    ghost_booking))
            await gate.grab(course_id, ghost, ghost_booking)
            await gate.wait(course_id, "waiter-3", 9)
            steps["capacity increase"] = await announced(db.execute(
                "UPDATE courses SET capacity = 2 WHERE id = $1", course_id))
            steps["capacity increase synced"] = await announced(load())
            _, promoted = await gate.free(course_id)  # the promotion pass
            steps["promotion pass"] = await announced(asyncio.sleep(0))
            assert [p.resident_id for p in promoted] == ["waiter-3"]
            # Back as the ledger has it (no bookings): nothing for the service's sweeper to do.
            steps["free of the last holders"] = await announced(asyncio.gather(
                gate.free(course_id, ghost, ghost_booking, promotions=0),
                gate.free(course_id, "waiter-3", promoted[0].booking_id, promotions=0)))
            steps["promotion pass with nobody waiting"] = await announced(gate.free(course_id))
    finally:
        await pubsub.aclose()
        await server.aclose()
        await gate.close()

    assert steps == {
        "first load": True, "sync with nothing to change": False,
        "grab taking the seat": False, "grab refused": False, "waitlist join": False,
        "free of no seat": False, "free promoting the waiter": True, "promotion undone": True,
        "last waiter leaves, a seat free": True, "grab again": False,
        "last waiter leaves, no seat free": False, "free by the holder": True,
        "capacity increase": False, "capacity increase synced": True, "promotion pass": True,
        "free of the last holders": True, "promotion pass with nobody waiting": False,
    }


async def test_a_cancel_announces_and_a_racer_gets_the_seat_at_once(db, redis, http):
    course = await make_course(http, capacity=1)
    holder = unique("holder")
    booking = (await grab(http, course["id"], holder)).json()
    async with remembering(db, redis) as (path, memory):
        async def free() -> None:
            assert (await cancel(http, booking["id"], holder)).status_code == 200

        await freed_at_once(path, memory, course["id"], free)


async def test_a_capacity_increase_announces_and_a_racer_gets_the_seat_at_once(db, redis, http):
    course = await make_course(http, capacity=1)
    assert (await grab(http, course["id"], unique("holder"))).status_code == 201
    async with remembering(db, redis) as (path, memory):
        async def free() -> None:
            bigger = await http.patch(f"/v1/courses/{course['id']}", json={"capacity": 2},
                                      headers=OPERATOR)
            assert bigger.status_code == 200, bigger.text

        await freed_at_once(path, memory, course["id"], free)


async def test_an_expired_hold_announces_and_a_racer_gets_the_seat_at_once(db, redis, http):
    course = await make_course(http, capacity=1, price_cents=PRICE)
    hold = (await grab(http, course["id"], unique("late-payer"))).json()
    assert hold["status"] == "held"
    async with remembering(db, redis) as (path, memory):
        async def free() -> None:
            await db.execute(LAPSE, hold["id"])  # the service's sweeper expires it

        await freed_at_once(path, memory, course["id"], free)


async def test_a_reconciler_give_back_announces_and_a_racer_gets_the_seat_at_once(db, redis):
    course_id = await course_row(db, capacity=1)
    async with remembering(db, redis) as (path, memory):
        async with SweeperPaused(redis):
            await ready(path, memory, course_id)  # a load now would give the seat back at once
            # A grab whose writer died: the seat is taken, no row will ever come.
            taken = await path.gate.grab(course_id, unique("died"), str(uuid.uuid4()))
            assert taken.outcome is Outcome.TAKEN
            pending_key = course_keys(course_id)[2]
            seconds, _ = await redis.time()
            aged = {resident: (seconds - 10 * PENDING_TIMEOUT_S) * 1000
                    for resident in await redis.zrange(pending_key, 0, -1)}
            await redis.zadd(pending_key, aged, xx=True)
            await refused_and_remembered(path, memory, course_id, loaded=True)
        # The service's sweeper gives the seat back.
        await until(lambda: course_id in memory.recently_heard)
        assert not memory.remembers(course_id)
        won = await path.bookings.grab(course_id, unique("racer"))
        assert isinstance(won, Grabbed) and won.new, won


async def test_a_swap_announces_the_course_it_left(db, redis, http):
    old = await make_course(http, capacity=1)
    new = await make_course(http, capacity=1)
    swapper = unique("swapper")
    booking = (await grab(http, old["id"], swapper)).json()
    async with remembering(db, redis) as (path, memory):
        async def free() -> None:
            swapped = await http.post(f"/v1/bookings/{booking['id']}/swap",
                                      json={"course_id": new["id"]},
                                      headers=resident(swapper))
            assert swapped.status_code == 201, swapped.text

        await freed_at_once(path, memory, old["id"], free)


async def test_a_failed_write_gives_back_announced(db, redis):
    course_id = await course_row(db, capacity=1)
    async with remembering(db, redis) as (path, memory):
        writer, booking_id = unique("writer"), str(uuid.uuid4())
        await ready(path, memory, course_id)
        taken = await path.bookings.seats.take(course_id, writer, booking_id)
        assert taken.outcome is Outcome.TAKEN  # its row is on its way
        await refused_and_remembered(path, memory, course_id)
        await db.execute(FAIL_INSERTS.format(course_id=course_id))
        try:
            with pytest.raises(CommitFailed):  # and, failing surely, gives its seat back
                await path.ledger.record(NewBooking(booking_id, course_id, writer))
            await until(lambda: course_id in memory.recently_heard)
            assert not memory.remembers(course_id)
        finally:
            await db.execute(STOP_FAILING)
        won = await path.bookings.grab(course_id, unique("racer"))
        assert isinstance(won, Grabbed) and won.new, won


async def test_with_someone_waiting_a_freed_seat_is_theirs_and_racers_still_hear_sold_out(
        db, redis, http):
    course = await make_course(http, capacity=1)
    holder, waiter = unique("holder"), unique("waiter")
    booking = (await grab(http, course["id"], holder)).json()
    assert (await join_waitlist(http, course["id"], waiter)).status_code == 201
    async with remembering(db, redis) as (path, memory):
        await refused_and_remembered(path, memory, course["id"])
        assert (await cancel(http, booking["id"], holder)).status_code == 200
        await until(lambda: course["id"] in memory.recently_heard)
        racer = await path.bookings.grab(course["id"], unique("racer"))
        promoted = await path.bookings.grab(course["id"], waiter)  # a holder now: asks the gate

    assert code_of(racer) == "sold_out"
    assert isinstance(promoted, Grabbed) and not promoted.new


# --- the bound, the race, not yet open --------------------------------------------------------


async def test_with_announcements_lost_a_freed_seat_is_grabbable_once_the_memory_lapses(
        db, redis, http):
    ttl_s = 1.0
    course = await make_course(http, capacity=1)
    holder = unique("holder")
    booking = (await grab(http, course["id"], holder)).json()
    async with remembering(db, redis, ttl_s=ttl_s, listen=False) as (path, memory):
        asked = time.monotonic()
        await refused_and_remembered(path, memory, course["id"])
        assert (await cancel(http, booking["id"], holder)).status_code == 200
        freed = time.monotonic()
        answers: list[str] = []

        async def racer_won() -> bool:
            answers.append(code_of(await path.bookings.grab(course["id"], unique("racer"))))
            return answers[-1] == "taken"

        won = await until(racer_won, timeout=ttl_s + 10)

    assert set(answers[:-1]) <= {"sold_out"}
    assert won >= asked + ttl_s  # what the memory said held for its whole life
    assert won - max(freed, asked + ttl_s) < 5  # and not much longer (one poll, one grab)


async def test_while_its_heartbeats_come_back_the_memory_outlives_its_ttl(db, redis):
    """Hearing its own beat back means every announcement before it was heard, so an entry is
    still trusted long after its look: the next grabs are answered without the gate."""
    ttl_s = 1.5
    course_id = await course_row(db, capacity=1)
    async with remembering(db, redis, ttl_s=ttl_s) as (path, memory):
        assert isinstance(await path.bookings.grab(course_id, unique("first")), Grabbed)
        looked = time.monotonic()
        await refused_and_remembered(path, memory, course_id)
        await until(lambda: time.monotonic() >= looked + 2 * ttl_s, timeout=3 * ttl_s)
        assert memory.heard_all_until > looked + ttl_s  # beats sent after the look came back
        sent, remembered = grabs_sent_to_redis(), answered_from_memory("sold_out")
        answer = await path.bookings.grab(course_id, unique("racer"))

    assert code_of(answer) == "sold_out"
    assert grabs_sent_to_redis() == sent
    assert answered_from_memory("sold_out") == remembered + 1


async def test_a_process_that_stops_hearing_its_heartbeats_stops_trusting_its_memory(db, redis):
    """A listener that stops hearing (here it is stopped; in life a stalled subscription or a
    frozen loop) hears no announcement either: its entries lapse `ttl_s` after the last beat it
    heard was sent, and the next grab asks the gate."""
    ttl_s = 1.0
    course_id = await course_row(db, capacity=1)
    async with remembering(db, redis, ttl_s=ttl_s) as (path, memory):
        assert isinstance(await path.bookings.grab(course_id, unique("first")), Grabbed)
        await refused_and_remembered(path, memory, course_id)
        await memory.stop()
        last_heard = memory.heard_all_until
        lapsed = await until(lambda: not memory.remembers(course_id), timeout=ttl_s + 10)
        assert lapsed >= last_heard + ttl_s  # trusted until then, not before
        sent = grabs_sent_to_redis()
        decision = await path.bookings.seats.take(course_id, unique("racer"), str(uuid.uuid4()))
        assert decision.outcome is Outcome.SOLD_OUT
        assert grabs_sent_to_redis() == sent + 1


async def test_an_announcement_before_the_look_is_written_keeps_it_from_being_remembered(
        db, redis, http):
    course = await make_course(http, capacity=1)
    holder = unique("holder")
    booking = (await grab(http, course["id"], holder)).json()
    looked, go_on = asyncio.Event(), asyncio.Event()

    async def hold_the_look(_: int) -> None:
        looked.set()
        await go_on.wait()

    async with remembering(db, redis) as (path, memory):
        await ready(path, memory, course["id"])
        memory.recently_heard.clear()
        memory.before_remembering = hold_the_look
        racer = asyncio.create_task(path.bookings.grab(course["id"], unique("racer")))
        await asyncio.wait_for(looked.wait(), 10)  # the gate said: sold out, holder inside
        assert (await cancel(http, booking["id"], holder)).status_code == 200
        await until(lambda: course["id"] in memory.recently_heard)  # heard before the write
        go_on.set()
        assert code_of(await racer) == "sold_out"
        remembered = memory.remembers(course["id"])
        memory.before_remembering = None
        won = await path.bookings.grab(course["id"], unique("racer"))

    assert not remembered
    assert isinstance(won, Grabbed) and won.new, won


async def test_not_open_from_memory_ends_at_the_opening(db, redis):
    course_id = await course_row(db, capacity=1, opens_in_s=4)
    async with remembering(db, redis) as (path, memory):
        await ready(path, memory, course_id)
        first = await path.bookings.grab(course_id, unique("early"))
        assert code_of(first) == "not_open" and memory.remembers(course_id)
        opens_ms = await db.fetchval(
            "SELECT (extract(epoch FROM sales_open_at) * 1000)::bigint FROM courses "
            "WHERE id = $1", course_id)
        remembered = answered_from_memory("not_open")
        answers: list[str] = []

        async def racer_won() -> bool:
            answers.append(code_of(await path.bookings.grab(course_id, unique("racer"))))
            return answers[-1] == "taken"

        await until(racer_won, timeout=30)
        seconds, micros = await redis.time()

    assert set(answers[:-1]) <= {"not_open"}
    assert answered_from_memory("not_open") > remembered
    # Well inside the memory's minute: the opening itself ended what it remembered.
    assert seconds * 1000 + micros // 1000 - opens_ms < 10_000


async def test_not_open_from_memory_ends_when_the_opening_moves_earlier(db, redis, http):
    course = await make_course(http, capacity=1, opens_in_s=3600)
    async with remembering(db, redis) as (path, memory):
        await ready(path, memory, course["id"])
        first = await path.bookings.grab(course["id"], unique("early"))
        assert code_of(first) == "not_open" and memory.remembers(course["id"])
        assert code_of(await path.bookings.grab(course["id"], unique("early"))) == "not_open"
        memory.recently_heard.clear()
        moved = await http.patch(f"/v1/courses/{course['id']}",
                                 json={"sales_open_at": "2020-01-01T00:00:00Z"},
                                 headers=OPERATOR)
        assert moved.status_code == 200, moved.text
        await until(lambda: course["id"] in memory.recently_heard)
        assert not memory.remembers(course["id"])
        won = await path.bookings.grab(course["id"], unique("racer"))

    assert isinstance(won, Grabbed) and won.new, won


async def test_a_lost_subscription_forgets_everything_once_it_is_back(db, redis, stores):
    """Announcements published while the listener was cut off are lost: when it subscribes
    again, the memory forgets every course."""
    name = unique("memory").replace("-", "_")
    own = redis_client(stores, client_name=name)
    course_id = await course_row(db, capacity=1)
    try:
        async with remembering(db, redis, memory_redis=own) as (path, memory):
            assert isinstance(await path.bookings.grab(course_id, unique("first")), Grabbed)
            await refused_and_remembered(path, memory, course_id)
            await cut_listener(stores, name)
            await until(lambda: not memory.remembers(course_id))  # its minute is far from over
            await until(memory.subscribed.is_set)
            assert code_of(await path.bookings.grab(course_id, unique("racer"))) == "sold_out"
            assert memory.remembers(course_id)  # and it remembers again
    finally:
        await own.aclose()


def course_server(redis: Redis, course_id: int) -> Redis:
    """A client of its own on the server of the course's keys (the one Redis, or the cluster's
    primary serving them)."""
    if isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(course_keys(course_id)[0])
        return Redis(host=node.host, port=node.port, decode_responses=True)
    return node_client(redis)


async def cut_listener(stores: Stores, name: str) -> None:
    """Kill the pub/sub connection of the client named `name` (on a cluster, one of its
    connections, one per primary: losing any of them loses announcements)."""
    servers = ([Redis.from_url(stores.redis_url)] if stores.cluster is None
               else [Redis(host="127.0.0.1", port=node.port) for node in stores.cluster.nodes
                     if node.process is not None])
    try:
        for server in servers:
            listeners = [c for c in await server.client_list()
                         if c.get("name") == name and c.get("sub") != "0"]
            if listeners:
                await server.client_kill_filter(_id=listeners[0]["id"])
                return
        raise AssertionError(f"no pub/sub connection named {name}")
    finally:
        for server in servers:
            await server.aclose()
