"""Swapping a seat for another course, and the cancellation deadline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import (
    active_rows,
    cancel,
    gate_left,
    grab,
    join_waitlist,
    make_course,
    my_bookings,
    resident,
    unique,
    wait_for,
)

from booking.ops.check import check_invariants


async def swap(http, booking_id: str, who: str, course_id: int):
    return await http.post(f"/v1/bookings/{booking_id}/swap", json={"course_id": course_id},
                           headers=resident(who))


async def active_courses(http, who: str) -> list[int]:
    return sorted(b["course_id"] for b in await my_bookings(http, who)
                  if b["status"] in ("confirmed", "held"))


async def test_a_swap_moves_the_seat_and_frees_the_old_one_for_the_waitlist(http, redis):
    old = await make_course(http, capacity=1)
    target = await make_course(http, capacity=1)
    who, waiter = unique("swapper"), unique("waiter")
    booking = (await grab(http, old["id"], who)).json()
    await join_waitlist(http, old["id"], waiter)

    moved = await swap(http, booking["id"], who, target["id"])

    assert moved.status_code == 201, moved.text
    assert moved.json()["course_id"] == target["id"] and moved.json()["status"] == "confirmed"
    assert await active_courses(http, who) == [target["id"]]
    assert await active_courses(http, waiter) == [old["id"]]
    assert await gate_left(redis, old["id"]) == 0 and await gate_left(redis, target["id"]) == 0


async def test_a_swap_to_a_full_course_keeps_the_old_seat(http):
    old = await make_course(http, capacity=1)
    full = await make_course(http, capacity=1)
    await grab(http, full["id"], unique("first"))
    who = unique("swapper")
    booking = (await grab(http, old["id"], who)).json()

    refused = await swap(http, booking["id"], who, full["id"])
    same = await swap(http, booking["id"], who, old["id"])

    assert (refused.status_code, refused.json()["code"]) == (409, "sold_out")
    assert (same.status_code, same.json()["code"]) == (409, "same_course")
    assert await active_courses(http, who) == [old["id"]]


async def test_swaps_under_contention_never_leave_two_seats_or_none(http, db, redis):
    origin = await make_course(http, capacity=40)
    target = await make_course(http, capacity=15)
    residents = [unique("mover") for _ in range(40)]
    bookings = [(await grab(http, origin["id"], who)).json()["id"] for who in residents]

    answers = await asyncio.gather(*(swap(http, booking, who, target["id"])
                                     for who, booking in zip(residents, bookings, strict=True)))

    moved = sum(a.status_code == 201 for a in answers)
    assert moved == 15
    assert {a.json()["code"] for a in answers if a.status_code != 201} == {"sold_out"}
    holdings = await asyncio.gather(*(active_courses(http, who) for who in residents))
    assert all(len(courses) == 1 for courses in holdings)
    assert await active_rows(db, target["id"]) == 15
    assert await active_rows(db, origin["id"]) == 25
    assert await gate_left(redis, origin["id"]) == 15
    report = await check_invariants(db, redis, None, course_ids=[origin["id"], target["id"]])
    assert report.ok, report.violations


async def test_a_cancel_after_the_deadline_is_refused(http, db):
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    course = await make_course(http, capacity=2, cancel_deadline=deadline.isoformat())
    who = unique("late")
    booking = (await grab(http, course["id"], who)).json()

    async def deadline_passed() -> bool:  # by Postgres's clock, the one the service asks
        return await db.fetchval("SELECT now() > $1", deadline)

    await wait_for(deadline_passed)

    late = await cancel(http, booking["id"], who)

    assert (late.status_code, late.json()["code"]) == (409, "cancel_deadline_passed")
    assert await active_courses(http, who) == [course["id"]]
