"""Abuse limits on the grab path (the test service allows 60 grabs per resident and 1000 per
address in 10 s)."""

from __future__ import annotations

import asyncio

from conftest import active_rows, address_of, grab, make_course, resident, unique


async def test_a_resident_hammering_gets_429_with_retry_after(http, db):
    course = await make_course(http, capacity=1)
    who = unique("hammer")
    answers = [await grab(http, course["id"], who) for _ in range(70)]

    codes = [a.status_code for a in answers]
    assert codes[0] == 201 and set(codes[1:60]) == {200}
    assert set(codes[60:]) == {429}
    assert answers[-1].json()["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 10
    assert await active_rows(db, course["id"]) == 1


async def test_one_address_flooding_is_limited_but_others_still_grab(http, db):
    course = await make_course(http, capacity=5)
    flood_headers = {**resident("flooder"), "X-Forwarded-For": "203.0.113.7"}
    limit = asyncio.Semaphore(50)

    async def flood(n: int) -> int:
        headers = {**resident(f"flood-{n}"), "X-Forwarded-For": "203.0.113.7"}
        async with limit:
            answer = await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)
        return answer.status_code

    codes = await asyncio.gather(*(flood(n) for n in range(1100)))
    honest = await grab(http, course["id"], unique("honest"))
    late = await http.post(f"/v1/courses/{course['id']}/bookings", headers=flood_headers)

    assert codes.count(429) >= 100
    assert honest.status_code in (201, 409)  # an honest answer, not a 429
    assert late.status_code == 429
    assert await active_rows(db, course["id"]) <= 5


async def test_swaps_count_against_the_same_limit_as_grabs(http, db):
    mine = await make_course(http, capacity=1)
    full = await make_course(http, capacity=1)
    await grab(http, full["id"], unique("first"))
    who = unique("swap-hammer")
    booking = (await grab(http, mine["id"], who)).json()
    headers = {**resident(who), "X-Forwarded-For": address_of(who)}

    answers = [await http.post(f"/v1/bookings/{booking['id']}/swap",
                               json={"course_id": full["id"]}, headers=headers)
               for _ in range(65)]

    codes = [a.status_code for a in answers]
    assert set(codes[:59]) == {409} and set(codes[59:]) == {429}  # the grab was the first
    assert answers[-1].json()["code"] == "rate_limited" and answers[-1].headers["retry-after"]
    assert await active_rows(db, mine["id"]) == 1
