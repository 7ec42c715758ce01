"""When a store fails or forgets: seats come back, counters are rebuilt, Postgres holds the line."""

from __future__ import annotations

import asyncio
import uuid
from importlib import resources

import asyncpg
import pytest
from conftest import (
    FAIL_INSERTS,
    OPERATOR,
    STOP_FAILING,
    SweeperPaused,
    active_rows,
    gate_left,
    grab,
    make_course,
    resident,
    run_cli,
    service_env,
    unique,
    wait_for,
)

from booking.seats import course_keys


async def test_postgres_failing_after_the_gate_said_yes_gives_the_seat_back(http, db, redis):
    course = await make_course(http, capacity=3)
    await db.execute(FAIL_INSERTS.format(course_id=int(course["id"])))
    try:
        one_by_one = [await grab(http, course["id"], unique("unlucky")) for _ in range(5)]
        rush = await asyncio.gather(*(grab(http, course["id"], unique("rush"))
                                      for _ in range(20)))
    finally:
        await db.execute(STOP_FAILING)

    # Each seat the gate gave was given back, so grabs one after another all see a seat.
    assert [(a.status_code, a.json()["code"]) for a in one_by_one] == [(503, "unavailable")] * 5
    # In a rush, racers that came while all seats were out for writing heard an honest no.
    assert sum(a.status_code == 503 for a in rush) >= 3
    assert {a.json()["code"] for a in rush} <= {"unavailable", "sold_out"}
    assert await gate_left(redis, course["id"]) == 3
    assert await active_rows(db, course["id"]) == 0
    assert await redis.hlen(course_keys(course["id"])[1]) == 0
    retry = await grab(http, course["id"], unique("retry"))
    assert retry.status_code == 201
    assert await gate_left(redis, course["id"]) == 2


async def test_redis_flushed_then_counters_and_holders_come_back(http, db, redis, stores,
                                                                 tmp_path):
    course = await make_course(http, capacity=4)
    holder = unique("holder")
    booking = (await grab(http, course["id"], holder)).json()
    await grab(http, course["id"], unique("other"))

    await redis.flushdb()
    await redis.script_flush()
    result = run_cli(service_env(stores, tmp_path), "reconcile")

    assert result.returncode == 0, result.stderr
    assert "Reconciled" in result.stdout
    assert await gate_left(redis, course["id"]) == 2
    again = await grab(http, course["id"], holder)
    assert again.status_code == 200 and again.json()["id"] == booking["id"]
    assert (await grab(http, course["id"], unique("new"))).status_code == 201
    assert await active_rows(db, course["id"]) == 3


async def test_a_flushed_gate_comes_back_for_every_course(http, db, redis, stores, tmp_path):
    """`booking reconcile` rebuilds several courses at once; each comes back with its own
    seats left, whatever order they were taken in."""
    courses = [await make_course(http, capacity=5) for _ in range(12)]
    for n, course in enumerate(courses):
        for _ in range(n % 5):
            assert (await grab(http, course["id"], unique("held"))).status_code == 201

    await redis.flushdb()
    await redis.script_flush()
    result = run_cli(service_env(stores, tmp_path), "reconcile")

    assert result.returncode == 0, result.stderr
    assert [await gate_left(redis, c["id"]) for c in courses] == [5 - n % 5 for n in range(12)]


async def test_first_grab_after_redis_lost_a_course_reloads_it(http, db, redis):
    course = await make_course(http, capacity=5)
    taken = [await grab(http, course["id"], unique("early")) for _ in range(3)]
    assert all(t.status_code == 201 for t in taken)

    await redis.delete(*course_keys(course["id"]))
    await redis.script_flush()
    answers = await asyncio.gather(*(grab(http, course["id"], unique("after")) for _ in range(20)))

    assert sum(a.status_code == 201 for a in answers) == 2
    assert await active_rows(db, course["id"]) == 5
    assert await gate_left(redis, course["id"]) == 0


async def test_seat_taken_by_a_worker_that_died_comes_back(http, db, redis):
    """A grab that took a seat in Redis but never wrote its row (the process died)."""
    course = await make_course(http, capacity=2)
    grab_lua = resources.files("booking.seats").joinpath("grab.lua").read_text()
    outcome, *_ = await redis.eval(grab_lua, 4, *course_keys(course["id"]), unique("ghost"),
                                  "00000000-0000-4000-8000-000000000000")
    assert outcome == "taken"
    assert await gate_left(redis, course["id"]) == 1

    async def seat_returned() -> bool:
        return await gate_left(redis, course["id"]) == 2

    await wait_for(seat_returned, timeout=20)  # pending timeout 5 s, reconciler every 1 s
    assert await active_rows(db, course["id"]) == 0


CANCEL_BEHIND_THE_GATE = """
UPDATE bookings SET status = 'cancelled', cancelled_at = now() WHERE id = $1
"""


async def test_a_cancel_whose_release_never_ran_frees_the_seat_when_retried(http, db, redis):
    """The cancel was committed, then its worker died before giving the seat back."""
    course = await make_course(http, capacity=2)
    who = unique("retrier")
    booking = (await grab(http, course["id"], who)).json()
    # No sweeper round may give the seat back meanwhile: the retried cancel must do it.
    async with SweeperPaused(redis):
        await db.execute(CANCEL_BEHIND_THE_GATE, uuid.UUID(booking["id"]))
        assert await gate_left(redis, course["id"]) == 1

        again = await http.delete(f"/v1/bookings/{booking['id']}", headers=resident(who))

        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert await gate_left(redis, course["id"]) == 2
    assert (await grab(http, course["id"], who)).status_code == 201


async def test_a_cancel_cut_off_before_its_release_is_finished_by_the_reconciler(http, db,
                                                                                 redis):
    """As cancel_booking does it: mark the seat leaving, write the cancel, then die."""
    course = await make_course(http, capacity=2)
    who = unique("cut-off")
    booking = (await grab(http, course["id"], who)).json()
    leaving_lua = resources.files("booking.seats").joinpath("leaving.lua").read_text()
    assert await redis.eval(leaving_lua, 4, *course_keys(course["id"]), who, booking["id"]) == 1
    await db.execute(CANCEL_BEHIND_THE_GATE, uuid.UUID(booking["id"]))

    async def seat_returned() -> bool:
        return await gate_left(redis, course["id"]) == 2

    await wait_for(seat_returned, timeout=20)  # pending timeout 5 s, reconciler every 1 s


async def test_a_seat_the_gate_kept_after_any_lost_cancel_comes_back_in_a_full_round(
        http, db, redis):
    """No mark at all (say, a cancel written by hand): the reconciler's full rounds find it."""
    course = await make_course(http, capacity=2)
    booking = (await grab(http, course["id"], unique("unmarked"))).json()
    await db.execute(CANCEL_BEHIND_THE_GATE, uuid.UUID(booking["id"]))

    async def seat_returned() -> bool:
        return await gate_left(redis, course["id"]) == 2

    await wait_for(seat_returned, timeout=30)  # a full round every 10 rounds of 1 s


async def test_postgres_alone_refuses_oversell_and_duplicates(http, db, redis):
    """The gate bypassed: rows written straight into Postgres."""
    course = await make_course(http, capacity=2)
    insert = "INSERT INTO bookings (id, course_id, resident_id) VALUES (gen_random_uuid(), $1, $2)"
    await db.execute(insert, course["id"], "a")
    with pytest.raises(asyncpg.UniqueViolationError) as duplicate:
        await db.execute(insert, course["id"], "a")
    await db.execute(insert, course["id"], "b")
    with pytest.raises(asyncpg.CheckViolationError) as oversold:
        await db.execute(insert, course["id"], "c")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.executemany(insert, [(course["id"], "d"), (course["id"], "e")])

    assert duplicate.value.constraint_name == "bookings_one_active_per_resident"
    assert oversold.value.constraint_name == "courses_not_oversold"
    assert await active_rows(db, course["id"]) == 2
    await db.execute("UPDATE bookings SET status = 'cancelled' WHERE course_id = $1 "
                     "AND resident_id = 'a'", course["id"])
    await db.execute(insert, course["id"], "c")
    assert await active_rows(db, course["id"]) == 2
    await redis.delete(*course_keys(course["id"]))  # the gate reloads it from Postgres


async def test_postgres_alone_refuses_a_booking_of_a_cancelled_course(http, db, redis):
    """A grab that raced the course's cancellation, its row arriving after the cancel."""
    course = await make_course(http, capacity=3)
    cancelled = await http.patch(f"/v1/courses/{course['id']}", json={"status": "cancelled"},
                                 headers=OPERATOR)
    assert cancelled.status_code == 200
    insert = "INSERT INTO bookings (id, course_id, resident_id) VALUES (gen_random_uuid(), $1, $2)"

    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await db.execute(insert, course["id"], unique("late"))

    assert refused.value.constraint_name == "courses_cancelled_take_no_bookings"
    assert await active_rows(db, course["id"]) == 0


async def test_schema_applies_twice(stores, tmp_path):
    env = service_env(stores, tmp_path)
    first, second = run_cli(env, "db", "init"), run_cli(env, "db", "init")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
