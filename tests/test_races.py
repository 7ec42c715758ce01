"""Many clients at one course at once: the invariants of DESIGN.md under contention."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from conftest import active_rows, gate_left, grab, hammer, make_course, resident, unique


async def test_500_residents_rush_a_20_seat_course(http, db, redis):
    course = await make_course(http, capacity=20)
    crowd = [unique("rusher") for _ in range(500)]

    answers = await asyncio.gather(*(grab(http, course["id"], who) for who in crowd))

    statuses = Counter(a.status_code for a in answers)
    codes = Counter(a.json().get("code") for a in answers if a.status_code == 409)
    assert statuses == {201: 20, 409: 480}
    assert codes == {"sold_out": 480}
    winners = {a.json()["resident_id"] for a in answers if a.status_code == 201}
    assert len(winners) == 20
    rows = await db.fetch("SELECT id::text, resident_id FROM bookings WHERE course_id = $1 "
                          "AND status = 'confirmed'", course["id"])
    assert {r["resident_id"] for r in rows} == winners
    assert {r["id"] for r in rows} == {a.json()["id"] for a in answers if a.status_code == 201}
    assert await gate_left(redis, course["id"]) == 0
    assert (await http.get(f"/v1/courses/{course['id']}")).json()["seats_left"] == 0


async def test_one_resident_firing_50_grabs_holds_one_booking(http, db):
    course = await make_course(http, capacity=5)
    who = unique("eager")

    answers = await asyncio.gather(*(grab(http, course["id"], who) for _ in range(50)))

    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    assert sum(a.status_code == 201 for a in answers) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    assert await active_rows(db, course["id"]) == 1
    mine = (await http.get("/v1/me/bookings", headers=resident(who))).json()
    assert [b["id"] for b in mine] == [answers[0].json()["id"]]


async def test_a_cancelled_seat_goes_to_exactly_one_racer(http, db, redis):
    course = await make_course(http, capacity=3)
    holders = [unique("holder") for _ in range(3)]
    taken = [await grab(http, course["id"], who) for who in holders]
    assert [t.status_code for t in taken] == [201, 201, 201]
    assert (await grab(http, course["id"], unique("late"))).json()["code"] == "sold_out"

    # Racers hammer the full course from before the cancel until the freed seat is taken, and
    # more start only once the cancel has answered: the seat is free while racers are in flight.
    answers: list[httpx.Response] = []
    cancel_answered, hammering = asyncio.Event(), asyncio.Event()

    def seat_retaken() -> bool:
        return cancel_answered.is_set() and any(a.status_code == 201 for a in answers)

    lanes = asyncio.create_task(hammer(http, course["id"], 20, answers, seat_retaken, hammering))
    await asyncio.wait_for(hammering.wait(), 30)
    before_cancel = len(answers)
    cancelled = await http.delete(f"/v1/bookings/{taken[0].json()['id']}",
                                  headers=resident(holders[0]))
    cancel_answered.set()

    async def late_racer() -> None:
        answers.append(await grab(http, course["id"], unique("late-racer")))

    await asyncio.gather(lanes, *(late_racer() for _ in range(20)))

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert before_cancel >= 20 and len(answers) > before_cancel + 20
    # Racers that came before the cancel saw sold out; exactly one got the freed seat.
    assert sum(a.status_code == 201 for a in answers) == 1
    assert {a.json()["code"] for a in answers if a.status_code != 201} == {"sold_out"}
    assert all(a.status_code == 409 for a in answers[:before_cancel])
    assert await active_rows(db, course["id"]) == 3
    assert await gate_left(redis, course["id"]) == 0


async def test_cancelled_seat_is_grabbable_again_at_once(http, db):
    course = await make_course(http, capacity=1)
    first, second = unique("first"), unique("second")
    booking = (await grab(http, course["id"], first)).json()
    assert (await grab(http, course["id"], second)).status_code == 409

    cancelled = await http.delete(f"/v1/bookings/{booking['id']}", headers=resident(first))
    again = await http.delete(f"/v1/bookings/{booking['id']}", headers=resident(first))

    assert cancelled.json()["status"] == "cancelled" and again.status_code == 200
    assert (await grab(http, course["id"], second)).status_code == 201
    assert await active_rows(db, course["id"]) == 1
