"""Paid courses: a grab is a hold until the provider's signed callback says paid, or it lapses."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

from conftest import (
    OPERATOR,
    Barrier,
    active_rows,
    cancel,
    gate_left,
    grab,
    lock_waiters,
    make_course,
    my_bookings,
    pay,
    resident,
    unique,
    wait_for,
)
from redis.asyncio import Redis

from booking.lifecycle.holds import expire_due_holds
from booking.ops.check import check_invariants
from booking.seats import SeatGate

PRICE = 4500
LAPSE = "UPDATE bookings SET expires_at = now() - interval '1 second' WHERE id = ANY($1::uuid[])"


async def booking_status(db, booking_id: str) -> str:
    return await db.fetchval("SELECT status FROM bookings WHERE id = $1", uuid.UUID(booking_id))


async def test_a_paid_course_gives_a_hold_and_a_free_one_a_confirmed_booking(http):
    paid = await make_course(http, capacity=3, price_cents=PRICE, hold_minutes=15)
    free = await make_course(http, capacity=3)
    who = unique("payer")

    sent = datetime.now(UTC)
    held = (await grab(http, paid["id"], who)).json()
    received = datetime.now(UTC)
    confirmed = (await grab(http, free["id"], who)).json()

    assert held["status"] == "held"  # for 15 minutes from the moment the seat was taken
    expires_at = datetime.fromisoformat(held["expires_at"])
    assert sent + timedelta(minutes=15) <= expires_at <= received + timedelta(minutes=15)
    assert confirmed["status"] == "confirmed" and confirmed["expires_at"] is None
    assert paid["hold_minutes"] == 15


async def test_a_signed_payment_confirms_the_hold_once(http, db):
    course = await make_course(http, capacity=2, price_cents=PRICE)
    who = unique("payer")
    booking = (await grab(http, course["id"], who)).json()
    ref = unique("provider")

    first = await pay(http, booking["id"], PRICE, ref)
    again = await pay(http, booking["id"], PRICE, ref)

    assert first.status_code == 200, first.text
    assert first.json() == {"provider_ref": ref, "booking_id": booking["id"],
                            "outcome": "confirmed", "booking_status": "confirmed"}
    assert again.status_code == 200 and again.json() == first.json()
    assert [b["status"] for b in await my_bookings(http, who)] == ["confirmed"]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE provider_ref = $1", ref) == 1


async def test_unsigned_or_badly_signed_or_wrong_amount_callbacks_change_nothing(http, db):
    course = await make_course(http, capacity=2, price_cents=PRICE)
    booking = (await grab(http, course["id"], unique("payer"))).json()
    body = json.dumps({"provider_ref": unique("ref"), "booking_id": booking["id"],
                       "amount_cents": PRICE, "status": "paid"}).encode()

    unsigned = await http.post("/v1/payments/callback", content=body)
    forged = await pay(http, booking["id"], PRICE, secret="not-the-provider-secret-at-all!!")
    wrong_amount = await pay(http, booking["id"], PRICE - 1)

    assert (unsigned.status_code, unsigned.json()["code"]) == (401, "bad_signature")
    assert (forged.status_code, forged.json()["code"]) == (401, "bad_signature")
    assert (wrong_amount.status_code, wrong_amount.json()["code"]) == (409, "amount_mismatch")
    assert await booking_status(db, booking["id"]) == "held"


async def test_an_unpaid_hold_lapses_and_a_late_payment_is_a_refund_not_a_seat(http, db, redis):
    course = await make_course(http, capacity=1, price_cents=PRICE)
    who = unique("late-payer")
    booking = (await grab(http, course["id"], who)).json()
    assert await gate_left(redis, course["id"]) == 0
    await db.execute(LAPSE, [uuid.UUID(booking["id"])])  # ten minutes have passed

    async def expired() -> bool:
        return await booking_status(db, booking["id"]) == "expired"

    async def seat_back() -> bool:  # the sweeper frees the seat after it wrote the expiry
        return await gate_left(redis, course["id"]) == 1

    await wait_for(expired)  # the sweeper runs every second in the tests
    await wait_for(seat_back)
    late = await pay(http, booking["id"], PRICE)
    refunds = await http.get("/v1/payments/refunds", headers=OPERATOR)

    assert late.status_code == 200 and late.json()["outcome"] == "refund_due"
    assert await booking_status(db, booking["id"]) == "expired"
    assert booking["id"] in {r["booking_id"] for r in refunds.json()}
    assert (await grab(http, course["id"], unique("next"))).status_code == 201


async def test_payment_and_expiry_racing_for_the_same_hold_have_one_winner(http, db, redis,
                                                                           stores):
    """Payments and expiry sweeps hit every hold at once; Postgres's clock, not who comes
    first, decides: a hold that lapsed before its payment is never confirmed, one that did not
    is never expired."""
    course = await make_course(http, capacity=40, price_cents=PRICE)
    holds = [(await grab(http, course["id"], unique("racer"))).json() for _ in range(40)]
    lapsed, live = holds[::2], holds[1::2]
    await db.execute(LAPSE, [uuid.UUID(h["id"]) for h in lapsed])
    gate = SeatGate(Redis.from_url(stores.redis_url, decode_responses=True))
    paid = asyncio.Event()

    async def pay_all() -> list:
        try:
            return await asyncio.gather(*(pay(http, h["id"], PRICE) for h in holds))
        finally:
            paid.set()

    async def expire_until_paid() -> int:  # sweeps before, among and after the payments
        sweeps = 0
        while not paid.is_set() or not sweeps:
            await expire_due_holds(db, gate)
            sweeps += 1
        return sweeps

    try:
        answers, _ = await asyncio.gather(pay_all(), expire_until_paid())
    finally:
        await gate.redis.aclose()

    for hold, answer in zip(holds, answers, strict=True):
        expected = ("refund_due", "expired") if hold in lapsed else ("confirmed", "confirmed")
        assert (answer.json()["outcome"], await booking_status(db, hold["id"])) == expected
    assert await active_rows(db, course["id"]) == len(live)

    async def seats_back() -> bool:  # a sweep of the service may still be freeing one
        return await gate_left(redis, course["id"]) == len(lapsed)

    await wait_for(seats_back)
    report = await check_invariants(db, redis, None, course_ids=[course["id"]])
    assert report.ok, report.violations


async def test_a_sweep_killed_mid_round_loses_no_seat_and_promotes_nobody_twice(http, db, redis,
                                                                               stores):
    course = await make_course(http, capacity=12, price_cents=PRICE)
    holds = [(await grab(http, course["id"], unique("holder"))).json() for _ in range(12)]
    waiters = [unique("waiter") for _ in range(5)]
    for who in waiters:
        assert (await http.post(f"/v1/courses/{course['id']}/waitlist",
                                headers=resident(who))).status_code == 201
    await db.execute(LAPSE, [uuid.UUID(h["id"]) for h in holds])
    gate = SeatGate(Redis.from_url(stores.redis_url, decode_responses=True))
    for delay_s in (0.0, 0.005, 0.01, 0.02, 0.04):  # killed at a different point each time
        sweep = asyncio.create_task(expire_due_holds(db, gate))
        await asyncio.sleep(delay_s)
        sweep.cancel()
        await asyncio.gather(sweep, return_exceptions=True)
    await gate.redis.aclose()

    async def settled() -> bool:  # the service's own sweeper and reconciler finish the job
        report = await check_invariants(db, redis, None, course_ids=[course["id"]])
        return await gate_left(redis, course["id"]) == 7 and report.ok

    await wait_for(settled, timeout=30)
    assert [await booking_status(db, h["id"]) for h in holds] == ["expired"] * 12
    promoted = await db.fetch("SELECT resident_id FROM outbox WHERE kind = 'promoted' "
                              "AND (payload->>'course_id')::bigint = $1", course["id"])
    assert sorted(r["resident_id"] for r in promoted) == sorted(waiters)
    assert await active_rows(db, course["id"]) == 5


# Holds the payment's transaction right after it confirmed one resident's hold (the booking row
# locked, nothing committed) until the test lets go of an advisory lock.
PAYMENT_BARRIER = """
CREATE OR REPLACE FUNCTION test_payment_barrier() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({key});
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER test_payment_barrier AFTER UPDATE ON bookings FOR EACH ROW
    WHEN (OLD.resident_id = '{who}' AND NEW.status = 'confirmed')
    EXECUTE FUNCTION test_payment_barrier();
"""
LIFT_PAYMENT_BARRIER = "DROP TRIGGER IF EXISTS test_payment_barrier ON bookings"
BARRIER_KEY = 0x5041_5944  # "PAYD"
async def test_a_cancel_that_waited_for_the_payment_owes_its_refund(http, db, redis):
    """The resident cancels while the provider's callback is confirming the hold: the cancel
    waits for the payment's row lock, then ends a paid booking, so the same transaction owes
    the refund (before the fix the payment stayed `confirmed` on a cancelled booking)."""
    course = await make_course(http, capacity=1, price_cents=PRICE)
    who = unique("payer")
    booking = (await grab(http, course["id"], who)).json()
    async with Barrier(db, BARRIER_KEY, PAYMENT_BARRIER.format(key=BARRIER_KEY, who=who),
                       LIFT_PAYMENT_BARRIER) as barrier:
        paying = asyncio.ensure_future(pay(http, booking["id"], PRICE))
        await wait_for(lock_waiters(db, 1), timeout=10)  # the payment, at the barrier
        cancelling = asyncio.ensure_future(cancel(http, booking["id"], who))
        await wait_for(lock_waiters(db, 2), timeout=10)  # the cancel, behind its row
        await barrier.lift()
        paid, cancelled = await asyncio.gather(paying, cancelling)

    assert paid.json()["outcome"] == "confirmed", paid.text
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    refunds = await http.get("/v1/payments/refunds", headers=OPERATOR)
    assert booking["id"] in {r["booking_id"] for r in refunds.json()}
    report = await check_invariants(db, redis, None, course_ids=[course["id"]])
    assert report.ok, report.violations
