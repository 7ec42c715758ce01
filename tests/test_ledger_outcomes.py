"""A group-commit batch that falls back to one row at a time keeps every outcome it learns.

A batch refused by a constraint is retried row by row; a later row failing another way (a
statement timeout, an error raised by the database) must fail only itself: rows the retry has
already committed stay committed, their residents hear 201 and keep their seats in the gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from conftest import SweeperPaused, unique
from inprocess import course_row, seat_path
from prometheus_client import REGISTRY

from booking.bookings import Grabbed
from booking.core.db import create_pool
from booking.core.errors import ApiError
from booking.seats import course_keys

# Makes one resident's row of one course fail in a way that is no constraint.
FAIL_ONE_ROW = """
CREATE OR REPLACE FUNCTION test_ledger_fail_one_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.course_id = {course_id} AND NEW.resident_id = '{resident}' THEN
        {failure};
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_ledger_fail_one_row BEFORE INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION test_ledger_fail_one_row();
"""
STOP_FAILING = "DROP TRIGGER IF EXISTS test_ledger_fail_one_row ON bookings"
FAILURES = {
    "raised": "RAISE EXCEPTION 'the disk said no'",
    "statement_timeout": "PERFORM pg_sleep(60)",  # cancelled by the pool's statement timeout
}
BEHIND_THE_GATE = """
INSERT INTO bookings (id, course_id, resident_id) VALUES (gen_random_uuid(), $1, $2)
"""


@pytest_asyncio.fixture
async def ledger_pool(stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=2,
                                     server_settings={"statement_timeout": "300"})
    yield pool
    await pool.close()


def batches() -> tuple[float, float]:
    """(batches written, rows in them) so far in this process."""
    count = REGISTRY.get_sample_value("booking_commit_batch_rows_count") or 0.0
    rows = REGISTRY.get_sample_value("booking_commit_batch_rows_sum") or 0.0
    return count, rows


@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_rows_committed_before_a_later_row_failed_stay_committed_and_answered(
        db, redis, ledger_pool, failure):
    course_id = await course_row(db, capacity=10)
    first, twin, second, doomed, third = (unique(name) for name in
                                          ("first", "twin", "second", "doomed", "third"))
    async with SweeperPaused(redis), seat_path(ledger_pool, redis) as path:
        await path.loader.load(course_id)
        # The twin already holds a booking the gate does not know: a constraint refuses its
        # row, so the batch is retried row by row; the doomed row then fails another way.
        await db.execute(BEHIND_THE_GATE, course_id, twin)
        await db.execute(FAIL_ONE_ROW.format(course_id=course_id, resident=doomed,
                                             failure=FAILURES[failure]))
        before = batches()
        try:
            answers = await asyncio.gather(*(path.bookings.grab(course_id, who) for who in
                                             (first, twin, second, doomed, third)))
        finally:
            await db.execute(STOP_FAILING)
        after = batches()

    assert (after[0] - before[0], after[1] - before[1]) == (1, 5), "not one batch of five"
    got = dict(zip((first, twin, second, doomed, third), answers, strict=True))
    assert isinstance(got[doomed], ApiError) and got[doomed].status_code == 503
    assert isinstance(got[twin], Grabbed) and not got[twin].new  # the booking it already had
    holders = await redis.hgetall(course_keys(course_id)[1])
    pending = await redis.zrange(course_keys(course_id)[2], 0, -1)
    for who in (first, second, third):
        row = await db.fetchrow("SELECT id::text, status FROM bookings WHERE course_id = $1 "
                                "AND resident_id = $2", course_id, who)
        assert row is not None and row["status"] == "confirmed", who
        assert (holders.get(who), who in pending) == (row["id"], False), "the gate disagrees"
        answer = got[who]
        assert isinstance(answer, Grabbed) and answer.new, (who, answer)
        assert answer.booking.id == row["id"]
    assert doomed not in holders
    active = await db.fetchval("SELECT count(*) FROM bookings WHERE course_id = $1 "
                               "AND booking_active(status)", course_id)
    assert active == 4
    left = int(await redis.hget(course_keys(course_id)[0], "left"))
    assert left == 10 - active


async def test_a_connection_lost_mid_retry_leaves_that_row_pending_and_the_rest_answered(
        db, redis, ledger_pool):
    """The doomed row's session dies under it: its outcome is unknown, so its seat stays
    pending for the reconciler; rows committed before it stand, rows after it were never sent
    (surely not written: their seats go back)."""
    course_id = await course_row(db, capacity=10)
    first, twin, doomed, unsent = (unique(name) for name in ("first", "twin", "doomed", "unsent"))
    async with SweeperPaused(redis), seat_path(ledger_pool, redis) as path:
        await path.loader.load(course_id)
        await db.execute(BEHIND_THE_GATE, course_id, twin)
        await db.execute(FAIL_ONE_ROW.format(
            course_id=course_id, resident=doomed,
            failure="PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(60)"))
        try:
            answers = await asyncio.gather(*(path.bookings.grab(course_id, who) for who in
                                             (first, twin, doomed, unsent)))
        finally:
            await db.execute(STOP_FAILING)
        got = dict(zip((first, twin, doomed, unsent), answers, strict=True))

        assert isinstance(got[first], Grabbed) and got[first].new
        assert [getattr(got[who], "status_code", None) for who in (doomed, unsent)] == [503, 503]
        await path.ledger.settled()  # committed rows' marks are cleared after their answers
        holders = await redis.hgetall(course_keys(course_id)[1])
        pending = await redis.zrange(course_keys(course_id)[2], 0, -1)
        assert holders.get(first) == got[first].booking.id and first not in pending
        assert doomed in holders and doomed in pending  # unknown: the reconciler judges it
        assert unsent not in holders
        rows = await db.fetch("SELECT resident_id FROM bookings WHERE course_id = $1 "
                              "AND booking_active(status)", course_id)
        assert {row[0] for row in rows} == {first, twin}


async def test_a_write_the_database_timed_out_gives_its_seat_back_at_once(db, redis, stores):
    """Postgres stops the doomed row's INSERT at its statement timeout and says so: surely not
    written. The client's own timeout (the service's pool, as the app builds it) must not beat
    that answer and leave the seat pending, or the resident's retry would be answered 503 until
    the reconciler judged the seat: the retry once the database is well gets its booking."""
    course_id = await course_row(db, capacity=1)
    resident = unique("retrier")
    pool = await create_pool(stores.database_url, 2, statement_timeout_ms=300)
    try:
        async with SweeperPaused(redis), seat_path(pool, redis) as path:
            await path.loader.load(course_id)
            await db.execute(FAIL_ONE_ROW.format(course_id=course_id, resident=resident,
                                                 failure=FAILURES["statement_timeout"]))
            try:
                first = await path.bookings.grab(course_id, resident)
            finally:
                await db.execute(STOP_FAILING)
            pending = await redis.zrange(course_keys(course_id)[2], 0, -1)
            retry = await path.bookings.grab(course_id, resident)
    finally:
        await pool.close()

    assert isinstance(first, ApiError) and first.status_code == 503
    assert resident not in pending, "the seat was left for the reconciler to judge"
    assert isinstance(retry, Grabbed) and retry.new, retry
