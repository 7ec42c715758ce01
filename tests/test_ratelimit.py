"""Abuse limits on the grab path.

These tests run against a service of their own whose windows last an hour (60 grabs per
resident, 1000 per address), so that no window can end in the middle of a test however slow the
machine: the counts below are exact, not "at least".
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
from conftest import (
    Stores,
    active_rows,
    address_of,
    client_of,
    grab,
    make_course,
    resident,
    running_service,
    unique,
)
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from booking.seats.ratelimit import Limit, RateLimiter

PER_RESIDENT, PER_ADDRESS, WINDOW_S = 60, 1000, 3600
VARYING = ("date", "retry-after", "x-request-id")  # headers two answers may differ in


@pytest.fixture(scope="module")
def limited_server(stores: Stores, db: asyncpg.Pool, redis: Redis,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second `booking serve` on the session's stores, with hour-long rate windows."""
    log = tmp_path_factory.mktemp("limited") / "server.log"
    with running_service(stores, log, BOOKING_WORKERS="1",
                         BOOKING_RATE_RESIDENT=f"{PER_RESIDENT}/{WINDOW_S}",
                         BOOKING_RATE_ADDRESS=f"{PER_ADDRESS}/{WINDOW_S}") as base_url:
        yield base_url


@pytest_asyncio.fixture(scope="module")
async def http(limited_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(limited_server, 100) as client:
        yield client


def assert_retry_after_ends_the_window(answer: httpx.Response, window_opened: float) -> None:
    """A 429 says to wait until the window that began with the first counted request ends."""
    assert answer.status_code == 429 and answer.json()["code"] == "rate_limited"
    left = WINDOW_S - (time.monotonic() - window_opened)
    assert math.floor(left) <= int(answer.headers["retry-after"]) <= WINDOW_S


async def test_a_resident_hammering_gets_429_with_retry_after(http, db):
    course = await make_course(http, capacity=1)
    who = unique("hammer")
    window_opened = time.monotonic()
    answers = [await grab(http, course["id"], who) for _ in range(PER_RESIDENT + 10)]

    codes = [a.status_code for a in answers]
    assert codes[0] == 201 and set(codes[1:PER_RESIDENT]) == {200}
    assert set(codes[PER_RESIDENT:]) == {429}
    assert_retry_after_ends_the_window(answers[-1], window_opened)
    assert await active_rows(db, course["id"]) == 1


async def test_the_fast_path_and_litestar_refuse_alike(http):
    """The 429 of a canonical grab (booking/fast_grab.py) and of the same grab routed by
    Litestar (`/v1/courses/0<id>/bookings`): the same body, headers and wait."""
    course = await make_course(http, capacity=1)
    who = unique("both-ways")
    window_opened = time.monotonic()
    headers = {**resident(who), "X-Forwarded-For": address_of(who)}
    for _ in range(PER_RESIDENT):
        assert (await grab(http, course["id"], who)).status_code in (200, 201)
    fast = await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)
    routed = await http.post(f"/v1/courses/0{course['id']}/bookings", headers=headers)
    assert fast.content == routed.content
    assert {k: v for k, v in fast.headers.items() if k not in VARYING} == \
        {k: v for k, v in routed.headers.items() if k not in VARYING}
    for answer in (fast, routed):
        assert_retry_after_ends_the_window(answer, window_opened)


async def test_one_address_flooding_is_limited_but_others_still_grab(http, db):
    course = await make_course(http, capacity=5)
    address = address_of(unique("flooding-address"))
    limit = asyncio.Semaphore(50)

    async def flood(who: str) -> httpx.Response:
        headers = {**resident(who), "X-Forwarded-For": address}
        async with limit:
            return await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)

    window_opened = time.monotonic()
    answers = await asyncio.gather(*(flood(unique("flood")) for _ in range(PER_ADDRESS + 100)))
    honest = await grab(http, course["id"], unique("honest"))
    late = await flood(unique("flood-late"))

    codes = Counter(a.status_code for a in answers)
    assert codes[429] == 100 and set(codes) <= {201, 409, 429}, codes
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"sold_out"}
    assert honest.status_code in (201, 409)  # an honest answer, not a 429
    assert_retry_after_ends_the_window(late, window_opened)
    assert await active_rows(db, course["id"]) == codes[201] <= 5


async def test_swaps_count_against_the_same_limit_as_grabs(http, db):
    mine = await make_course(http, capacity=1)
    full = await make_course(http, capacity=1)
    await grab(http, full["id"], unique("first"))
    who = unique("swap-hammer")
    window_opened = time.monotonic()
    booking = (await grab(http, mine["id"], who)).json()
    headers = {**resident(who), "X-Forwarded-For": address_of(who)}

    answers = [await http.post(f"/v1/bookings/{booking['id']}/swap",
                               json={"course_id": full["id"]}, headers=headers)
               for _ in range(PER_RESIDENT + 5)]

    codes = [a.status_code for a in answers]
    first_refused = PER_RESIDENT - 1  # the grab was the first
    assert set(codes[:first_refused]) == {409} and set(codes[first_refused:]) == {429}
    assert_retry_after_ends_the_window(answers[-1], window_opened)
    assert await active_rows(db, mine["id"]) == 1


async def test_a_subject_over_its_limit_is_refused_from_memory_until_its_window_ends(redis):
    """Once the counter said a resident is over, this process refuses them without Redis: with
    the counter deleted behind its back, Redis would let them through, the memory does not.
    When the window ends they may grab again."""
    from booking.seats.ratelimit import Limit, RateLimiter

    limiter = RateLimiter(redis, Limit(2, 1.5), Limit(0, 1.0))
    who = unique("over")
    try:
        assert [await limiter.wait_s(who, "-") for _ in range(2)] == [0.0, 0.0]
        opened = time.monotonic()
        assert await limiter.wait_s(who, "-") > 0  # the counter says so
        await redis.delete(f"rate:{{r:{who}}}")
        remembered = await limiter.wait_s(who, "-")  # Redis would now answer 0
        assert 0 < remembered <= 1.5 - (time.monotonic() - opened) + 0.05
        while await limiter.wait_s(who, "-") > 0:  # until the window ends, by the memory
            assert time.monotonic() - opened < 10
            await asyncio.sleep(0.05)
        assert time.monotonic() - opened >= 1.4
    finally:
        await limiter.close()


async def test_a_counter_that_does_not_answer_lets_the_request_through():
    """A limit whose Redis is down (on a cluster: the counter's primary, before its replica
    takes over) is not checked: the request goes ahead, and the metric counts it."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    limiter = RateLimiter(dead, Limit(1, 10), Limit(1, 10))
    before = REGISTRY.get_sample_value("booking_rate_limit_unchecked_total") or 0.0
    try:
        assert await limiter.wait_s(unique("resident"), "203.0.113.9") == 0.0
    finally:
        await limiter.close()
        await dead.aclose()
    assert REGISTRY.get_sample_value("booking_rate_limit_unchecked_total") == before + 2
