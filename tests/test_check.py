"""`booking check`: clean after a rush, and loud when an invariant is broken."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import httpx
from conftest import (
    SweeperPaused,
    cancel,
    grab,
    join_waitlist,
    make_course,
    pay,
    run_cli,
    service_env,
    unique,
)
from redis.asyncio import Redis

from booking.ops.check import check_invariants
from booking.seats import course_keys

PRICE = 4500
LAPSE = "UPDATE bookings SET expires_at = now() - make_interval(secs => $2) WHERE id = $1"
Step = Callable[[], Awaitable[object]]


async def test_check_passes_after_a_rush_and_catches_each_broken_invariant(
        http, db, redis, stores, tmp_path):
    control = await make_control_course(http)
    course = await make_course(http, capacity=10)
    answers = await asyncio.gather(*(grab(http, course["id"], unique("c")) for _ in range(40)))
    told = tmp_path / "received.txt"
    told.write_text("\n".join(a.json()["id"] for a in answers if a.status_code == 201))
    env = service_env(stores, tmp_path)

    def check_cli(*course_ids: int) -> subprocess.CompletedProcess[str]:
        return run_cli(env, "check", "--courses", ",".join(map(str, course_ids)))

    clean = run_cli(env, "check", "--courses", str(course["id"]), "--received", str(told))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Checked 1 courses, 10 active bookings, 10 booking ids" in clean.stdout
    assert "OK" in clean.stdout

    info = course_keys(course["id"])[0]
    async with SweeperPaused(redis):
        await redis.hincrby(info, "left", 1)
        try:
            drifted, elsewhere = check_cli(course["id"]), check_cli(control)
            everywhere = await check_invariants(db, redis)
        finally:
            await redis.hincrby(info, "left", -1)
    drift = f"course {course['id']}: gate says 1 seats left, ledger says 0"
    assert drifted.returncode == 1 and drift in drifted.stdout, drifted.stdout
    assert "FAILED: 1 violation(s)." in drifted.stdout
    assert drift in everywhere.violations  # no scope: every course
    assert elsewhere.returncode == 0, elsewhere.stdout  # another course's scope leaves it out

    lost = tmp_path / "lost.txt"
    lost.write_text(str(uuid.uuid4()))
    missing = run_cli(env, "check", "--courses", str(course["id"]), "--received", str(lost))
    assert missing.returncode == 1
    assert "1 booking(s) a client was told about are not in Postgres" in missing.stdout

    async with SweeperPaused(redis):
        await db.execute("UPDATE courses SET status = 'cancelled' WHERE id = $1", course["id"])
        found = await about(db, redis, course["id"], control)
        await db.execute("UPDATE courses SET status = 'published' WHERE id = $1", course["id"])
    assert f"course {course['id']} is cancelled but has 10 active booking(s)" in found

    await holds_and_payments_are_checked(http, db, redis, control)
    await refunds_and_unsent_notifications_are_reported(http, db, redis, control)
    await waitlist_and_outbox_are_checked(http, db, redis, control)


async def test_a_scope_naming_no_course_checks_nothing_and_says_so(db, redis):
    nowhere = 10**15
    report = await check_invariants(db, redis, course_ids=[nowhere])
    assert (report.ok, report.courses, report.active_bookings) == (True, 0, 0)
    assert report.notes == [f"1 course(s) asked for do not exist: {nowhere}"]
    assert (report.refunds_due, report.unsent_notifications) == (0, 0)


def test_check_refuses_a_missing_received_file(stores, tmp_path):
    result = run_cli(service_env(stores, tmp_path), "check", "--received", "nowhere.txt")
    assert result.returncode == 2 and "no such file" in result.stderr


async def make_control_course(http: httpx.AsyncClient) -> int:
    """A clean course with a booking: checks scoped to it must never see another's damage."""
    course = await make_course(http, capacity=2)
    assert (await grab(http, course["id"], unique("control"))).status_code == 201
    return course["id"]


async def about(db: asyncpg.Pool, redis: Redis, course_id: int, control: int,
                **options: float) -> list[str]:
    """The checker's violations for that course alone (other tests share the database), after
    making sure that a check scoped to the clean control course reports none of them."""
    report = await check_invariants(db, redis, course_ids=[course_id], **options)
    elsewhere = await check_invariants(db, redis, course_ids=[control], **options)
    assert elsewhere.ok, elsewhere.violations
    return report.violations


async def caught(db: asyncpg.Pool, redis: Redis, course_id: int, control: int, damage: Step,
                 repair: Step, expected: list[str]) -> None:
    """Break, check, repair; every expected line must have been reported."""
    await damage()
    try:
        found = await about(db, redis, course_id, control)
    finally:
        await repair()
    missing = [line for line in expected if line not in found]
    assert not missing, f"not reported: {missing}; reported: {found}"


async def pg_now(db: asyncpg.Pool) -> datetime:
    return await db.fetchval("SELECT now()")


async def lapsed_by(db: asyncpg.Pool, redis: Redis, cid: int, control: int, hold_id: uuid.UUID,
                    seconds: float, **options: float) -> tuple[list[str], float]:
    """Let the hold lapse `seconds` ago and check; the violations, and the most seconds by which
    it can have lapsed when the checker looked (by Postgres's clock)."""
    start = await pg_now(db)
    await db.execute(LAPSE, hold_id, seconds)
    found = await about(db, redis, cid, control, **options)
    return found, seconds + (await pg_now(db) - start).total_seconds()


async def holds_and_payments_are_checked(http: httpx.AsyncClient, db: asyncpg.Pool,
                                         redis: Redis, control: int) -> None:
    course = await make_course(http, capacity=3, price_cents=PRICE)
    cid = course["id"]
    hold = (await grab(http, cid, unique("holder"))).json()
    paid = (await grab(http, cid, unique("payer"))).json()
    ref = unique("ref")
    assert (await pay(http, paid["id"], PRICE, ref)).json()["outcome"] == "confirmed"
    assert await about(db, redis, cid, control) == []
    hold_id, paid_id = uuid.UUID(hold["id"]), uuid.UUID(paid["id"])
    lapsed = re.compile(rf"booking {hold['id']} \(course {cid}\): hold lapsed (\d+) s ago "
                        rf"and is still held")
    async with SweeperPaused(redis):
        try:
            within, _ = await lapsed_by(db, redis, cid, control, hold_id, 30.0)
            assert within == []  # within the grace: the sweeper's turn
            strict, most = await lapsed_by(db, redis, cid, control, hold_id, 30.0,
                                           hold_grace_s=10)
            assert len(strict) == 1 and 30 <= int(lapsed.fullmatch(strict[0])[1]) <= most, strict
            await db.execute("UPDATE bookings SET status = 'held' WHERE id = $1", paid_id)
            found, most = await lapsed_by(db, redis, cid, control, hold_id, 120.0)
        finally:
            await db.execute(LAPSE, hold_id, -600.0)
            await db.execute("UPDATE bookings SET status = 'confirmed' WHERE id = $1", paid_id)
        assert any(lapsed.fullmatch(v) and 120 <= int(lapsed.fullmatch(v)[1]) <= most
                   for v in found), found
        assert (f"payment {ref} (course {cid}) confirmed booking {paid['id']}, which is still "
                f"held") in found
        assert await about(db, redis, cid, control) == []


async def refunds_and_unsent_notifications_are_reported(
        http: httpx.AsyncClient, db: asyncpg.Pool, redis: Redis, control: int) -> None:
    course = await make_course(http, capacity=1, price_cents=PRICE)
    mine = [course["id"]]
    booking = (await grab(http, course["id"], unique("payer"))).json()
    assert (await pay(http, booking["id"], PRICE)).json()["outcome"] == "confirmed"
    before = await check_invariants(db, redis, course_ids=mine)
    twice = await pay(http, booking["id"], PRICE)  # paid twice: the money goes back
    # A row the dispatcher leaves alone for a day, so the count cannot reach zero meanwhile.
    row = await db.fetchval("INSERT INTO outbox (kind, resident_id, payload, next_attempt_at) "
                            "VALUES ('check-test', $1, $2::jsonb, now() + interval '1 day') "
                            "RETURNING id", unique("nobody"),
                            json.dumps({"course_id": course["id"]}))
    try:
        after = await check_invariants(db, redis, course_ids=mine)
        elsewhere = await check_invariants(db, redis, course_ids=[control])
    finally:
        await db.execute("DELETE FROM outbox WHERE id = $1", row)
    assert twice.json()["outcome"] == "refund_due"
    assert (before.refunds_due, after.refunds_due) == (0, 1)
    assert after.unsent_notifications == before.unsent_notifications + 1
    assert (elsewhere.refunds_due, elsewhere.unsent_notifications) == (0, 0)
    assert "  info: 1 payment(s) due for a refund" in after.summary()
    assert (f"  info: {after.unsent_notifications} outbox notification(s) not sent yet"
            in after.summary())


async def waitlist_and_outbox_are_checked(http: httpx.AsyncClient, db: asyncpg.Pool,
                                          redis: Redis, control: int) -> None:
    course = await make_course(http, capacity=1)
    cid = course["id"]
    first, promoted, waiter = unique("first"), unique("promoted"), unique("waiter")
    booking = (await grab(http, cid, first)).json()
    for who in (promoted, waiter):
        assert (await join_waitlist(http, cid, who)).status_code == 201
    assert (await cancel(http, booking["id"], first)).status_code == 200  # to `promoted`
    entry = await db.fetchrow("SELECT id, booking_id::text AS booking_id FROM waitlist "
                              "WHERE course_id = $1 AND resident_id = $2 AND status = 'promoted'",
                              cid, promoted)
    assert entry is not None and entry["booking_id"]
    assert await about(db, redis, cid, control) == []
    async with SweeperPaused(redis):
        await waitlist_breaks_are_caught(db, redis, cid, control, promoted, waiter, entry)
        await promotion_breaks_are_caught(db, redis, cid, control, first, booking["id"], entry)
        assert await about(db, redis, cid, control) == []


async def waitlist_breaks_are_caught(db: asyncpg.Pool, redis: Redis, cid: int, control: int,
                                     promoted: str, waiter: str, entry: asyncpg.Record) -> None:
    def course_set(sql: str) -> Step:
        return lambda: db.execute(f"UPDATE courses SET {sql} WHERE id = $1", cid)

    waiting_key = course_keys(cid)[3]
    place = await redis.zscore(waiting_key, waiter)
    assert place is not None
    await caught(db, redis, cid, control,
                 lambda: db.execute("INSERT INTO waitlist (course_id, resident_id) "
                                    "VALUES ($1, $2)", cid, promoted),
                 lambda: db.execute("DELETE FROM waitlist WHERE course_id = $1 AND "
                                    "resident_id = $2 AND status = 'waiting'", cid, promoted),
                 [f"resident {promoted} waits for course {cid} while holding booking "
                  f"{entry['booking_id']}",
                  f"course {cid}: gate waitlist entries differ from ledger (0 extra, 1 missing)"])
    await caught(db, redis, cid, control, course_set("capacity = 2"), course_set("capacity = 1"),
                 [f"course {cid}: 1 resident(s) waiting while 1 of 2 seats are free"])
    await caught(db, redis, cid, control, course_set("status = 'cancelled'"),
                 course_set("status = 'published'"),
                 [f"course {cid} is cancelled but 1 resident(s) still wait"])
    await caught(db, redis, cid, control, lambda: redis.zadd(waiting_key, {"ghost": 10**12}),
                 lambda: redis.zrem(waiting_key, "ghost"),
                 [f"course {cid}: gate waitlist entries differ from ledger (1 extra, 0 missing)"])
    await caught(db, redis, cid, control, lambda: redis.zrem(waiting_key, waiter),
                 lambda: redis.zadd(waiting_key, {waiter: place}),
                 [f"course {cid}: gate waitlist entries differ from ledger (0 extra, 1 missing)"])


async def promotion_breaks_are_caught(db: asyncpg.Pool, redis: Redis, cid: int, control: int,
                                      first: str, first_booking: str,
                                      entry: asyncpg.Record) -> None:
    def promoted_to(booking_id: str) -> Step:
        return lambda: db.execute("UPDATE waitlist SET booking_id = $2 WHERE id = $1",
                                  entry["id"], uuid.UUID(booking_id))

    def outbox_kind(old: str, new: str) -> Step:
        return lambda: db.execute("UPDATE outbox SET kind = $2 WHERE kind = $1 "
                                  "AND payload->>'booking_id' = $3", old, new,
                                  entry["booking_id"])

    nowhere = str(uuid.uuid4())
    wid, real = entry["id"], entry["booking_id"]
    await caught(db, redis, cid, control, promoted_to(nowhere), promoted_to(real),
                 [f"waitlist entry {wid} (course {cid}) is promoted to booking {nowhere}, "
                  f"which is not in Postgres",
                  f"waitlist entry {wid} (course {cid}): promotion to booking {nowhere} has "
                  f"no 'promoted' outbox row"])
    await caught(db, redis, cid, control, promoted_to(first_booking), promoted_to(real),
                 [f"waitlist entry {wid} (course {cid}) is promoted to booking {first_booking}, "
                  f"which belongs to course {cid} and resident {first}"])
    await caught(db, redis, cid, control, outbox_kind("promoted", "check-test-hidden"),
                 outbox_kind("check-test-hidden", "promoted"),
                 [f"waitlist entry {wid} (course {cid}): promotion to booking {real} has no "
                  f"'promoted' outbox row"])


async def test_a_paid_booking_that_ended_without_its_refund_is_reported(http, db, redis):
    control = await make_control_course(http)
    course = await make_course(http, capacity=3, price_cents=PRICE)
    cid = course["id"]
    payers, refs = [unique("payer") for _ in range(2)], [unique("ref") for _ in range(2)]
    paid = [(await grab(http, cid, who)).json() for who in payers]
    for booking, ref in zip(paid, refs, strict=True):
        assert (await pay(http, booking["id"], PRICE, ref)).json()["outcome"] == "confirmed"
    assert (await cancel(http, paid[0]["id"], payers[0])).status_code == 200  # refund owed
    assert await about(db, redis, cid, control) == []

    def outcome(ref: str, value: str) -> Step:
        return lambda: db.execute("UPDATE payments SET outcome = $2 WHERE provider_ref = $1",
                                  ref, value)

    def status(booking_id: str, value: str) -> Step:
        return lambda: db.execute("UPDATE bookings SET status = $2 WHERE id = $1",
                                  uuid.UUID(booking_id), value)

    async with SweeperPaused(redis):
        await caught(db, redis, cid, control, outcome(refs[0], "confirmed"),
                     outcome(refs[0], "refund_due"),
                     [f"booking {paid[0]['id']} (course {cid}) was paid and is cancelled, but "
                      f"no refund is owed"])
        await caught(db, redis, cid, control, status(paid[1]["id"], "expired"),
                     status(paid[1]["id"], "confirmed"),
                     [f"booking {paid[1]['id']} (course {cid}) was paid and is expired, but "
                      f"no refund is owed"])
        assert await about(db, redis, cid, control) == []


async def test_a_resident_both_waiting_and_seated_in_the_gate_is_reported(http, db, redis):
    control = await make_control_course(http)
    course = await make_course(http, capacity=1)
    cid, holder = course["id"], unique("holder")
    assert (await grab(http, cid, holder)).status_code == 201
    assert (await join_waitlist(http, cid, unique("waiter"))).status_code == 201
    waiting_key = course_keys(cid)[3]
    assert await about(db, redis, cid, control) == []

    async with SweeperPaused(redis):
        await caught(db, redis, cid, control, lambda: redis.zadd(waiting_key, {holder: 1}),
                     lambda: redis.zrem(waiting_key, holder),
                     [f"course {cid}: the gate has resident {holder} both waiting and holding "
                      f"a seat"])
        assert await about(db, redis, cid, control) == []
