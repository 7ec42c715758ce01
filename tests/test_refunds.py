"""Money owed is recorded: every path that ends a paid booking owes its refund, in the
transaction that ends it, lists it for operators, and tells the resident."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
from conftest import OPERATOR, cancel, grab, make_course, pay, resident, unique

from booking.ops.check import check_invariants

PRICE = 4500


async def paid_booking(http: httpx.AsyncClient, course_id: int, who: str,
                       ref: str | None = None) -> dict[str, Any]:
    """A hold of a paid course, paid through the signed callback."""
    booking = (await grab(http, course_id, who)).json()
    assert booking["status"] == "held", booking
    paid = await pay(http, booking["id"], PRICE, ref)
    assert paid.json()["outcome"] == "confirmed", paid.text
    return booking


async def refunds_due(http: httpx.AsyncClient) -> dict[str, int]:
    """booking id -> amount owed, as operators see the list."""
    listed = await http.get("/v1/payments/refunds", headers=OPERATOR)
    assert listed.status_code == 200, listed.text
    return {r["booking_id"]: r["amount_cents"] for r in listed.json()}


async def refund_notices(db: asyncpg.Pool, booking_id: str) -> list[tuple[str, dict]]:
    rows = await db.fetch("SELECT resident_id, payload::text AS payload FROM outbox "
                          "WHERE kind = 'refund_due' AND payload->>'booking_id' = $1",
                          booking_id)
    return [(row["resident_id"], json.loads(row["payload"])) for row in rows]


def notice(course_id: int, booking_id: str, ref: str, reason: str) -> dict[str, object]:
    return {"course_id": course_id, "booking_id": booking_id, "provider_ref": ref,
            "amount_cents": PRICE, "reason": reason}


async def test_a_resident_cancelling_a_paid_booking_is_owed_a_refund(http, db, redis):
    course = await make_course(http, capacity=3, price_cents=PRICE)
    payer, holder, ref = unique("payer"), unique("holder"), unique("ref")
    paid = await paid_booking(http, course["id"], payer, ref)
    unpaid = (await grab(http, course["id"], holder)).json()

    cancelled = await cancel(http, paid["id"], payer)
    dropped = await cancel(http, unpaid["id"], holder)
    repeated = await pay(http, paid["id"], PRICE, ref)  # the provider repeats its callback

    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert dropped.status_code == 200
    owed = await refunds_due(http)
    assert owed.get(paid["id"]) == PRICE and unpaid["id"] not in owed
    assert await refund_notices(db, paid["id"]) == [
        (payer, notice(course["id"], paid["id"], ref, "cancelled"))]
    assert await refund_notices(db, unpaid["id"]) == []
    assert repeated.json() == {"provider_ref": ref, "booking_id": paid["id"],
                               "outcome": "refund_due", "booking_status": "cancelled"}
    report = await check_invariants(db, redis, course_ids=[course["id"]])
    assert report.ok and report.refunds_due == 1, report.violations


async def test_swapping_away_from_a_paid_booking_owes_its_refund(http, db, redis):
    paid_course = await make_course(http, capacity=2, price_cents=PRICE)
    free_course = await make_course(http, capacity=2)
    who, ref = unique("swapper"), unique("ref")
    paid = await paid_booking(http, paid_course["id"], who, ref)

    moved = await http.post(f"/v1/bookings/{paid['id']}/swap",
                            json={"course_id": free_course["id"]}, headers=resident(who))

    assert moved.status_code == 201, moved.text
    assert (await refunds_due(http)).get(paid["id"]) == PRICE
    assert await refund_notices(db, paid["id"]) == [
        (who, notice(paid_course["id"], paid["id"], ref, "swapped"))]
    report = await check_invariants(db, redis,
                                    course_ids=[paid_course["id"], free_course["id"]])
    assert report.ok and report.refunds_due == 1, report.violations


async def test_a_cancelled_course_owes_every_paid_booking_its_refund(http, db, redis):
    course = await make_course(http, capacity=3, price_cents=PRICE)
    payers = {unique("payer"): unique("ref") for _ in range(2)}
    paid = {who: await paid_booking(http, course["id"], who, ref) for who, ref in payers.items()}
    holder = unique("holder")
    unpaid = (await grab(http, course["id"], holder)).json()

    cancelled = await http.patch(f"/v1/courses/{course['id']}", json={"status": "cancelled"},
                                 headers=OPERATOR)

    assert cancelled.status_code == 200, cancelled.text
    owed = await refunds_due(http)
    assert {b["id"]: owed.get(b["id"]) for b in paid.values()} == \
        {b["id"]: PRICE for b in paid.values()}
    assert unpaid["id"] not in owed
    for who, booking in paid.items():
        assert await refund_notices(db, booking["id"]) == [
            (who, notice(course["id"], booking["id"], payers[who], "course_cancelled"))]
    assert await refund_notices(db, unpaid["id"]) == []
    told = await db.fetch("SELECT resident_id FROM outbox WHERE kind = 'course_cancelled' "
                          "AND (payload->>'course_id')::bigint = $1", course["id"])
    assert sorted(r["resident_id"] for r in told) == sorted([*payers, holder])
    report = await check_invariants(db, redis, course_ids=[course["id"]])
    assert report.ok and report.refunds_due == 2, report.violations


async def test_a_refund_is_owed_only_when_the_booking_really_ended(db):
    """owe_refunds runs in the transaction that ended the booking; handed a booking that is
    still active it owes nothing."""
    from booking.ledger.refunds import owe_refunds

    async with db.acquire() as conn, conn.transaction():
        assert await owe_refunds(conn, [], "cancelled") == 0
        assert await owe_refunds(conn, [str(uuid.uuid4())], "cancelled") == 0
