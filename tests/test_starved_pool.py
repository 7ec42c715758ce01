"""A worker with few pooled connections never hangs: no code path waits for a second connection
while holding one, and every wait for a connection has a deadline (503, not for ever).

These run the app in-process (`create_app` with a pool of our own, of size one), so the pool's
size is exact and the starvation is certain, not a matter of scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import httpx
import pytest_asyncio
from conftest import PAYMENT_SECRET, SECRET, SweeperPaused, grab, make_course, resident, unique

from booking.app import create_app
from booking.core.settings import Settings
from booking.core.stores import open_pool, open_redis, write_budget_ms
from booking.seats.gate import course_keys

HANG_S = 20  # far beyond any answer of a healthy worker: reaching it means the worker hangs


def in_process_settings(stores) -> Settings:
    return Settings(database_url=stores.database_url, redis_url=stores.redis_url, secret=SECRET,
                    payment_secret=PAYMENT_SECRET, pending_timeout_s=5.0,
                    rate_per_resident=(0, 1.0), rate_per_address=(0, 1.0))


@pytest_asyncio.fixture
async def pool_of_one(stores) -> AsyncIterator[asyncpg.Pool]:
    """The pool a worker would open, with a single connection."""
    settings = in_process_settings(stores)
    pool = await open_pool(settings, 1, write_budget_ms(settings))
    yield pool
    pool.terminate()  # a hung transaction (before the fix) must not keep the test waiting


@contextlib.asynccontextmanager
async def worker(stores, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """One worker in-process on that pool (in the test's own event loop and task: the app's
    lifespan must end in the task it began in), without background tasks."""
    redis = open_redis(stores.redis_url)
    app = create_app(in_process_settings(stores), pool=pool, redis=redis,
                     background=False)
    transport = httpx.ASGITransport(app=app)
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://worker",
                                                 timeout=HANG_S * 2) as client:
        yield client
    await redis.aclose()


async def sold_out_course(http) -> int:
    course = await make_course(http, capacity=1)
    assert (await grab(http, course["id"], unique("holder"))).status_code == 201
    return course["id"]


async def answered(*calls: Awaitable[httpx.Response]) -> list[httpx.Response] | None:
    """Every answer, or None when they did not all come within HANG_S (the worker hangs)."""
    try:
        return await asyncio.wait_for(asyncio.gather(*calls), HANG_S)
    except TimeoutError:
        return None


HUNG = f"no answer within {HANG_S} s: the worker hangs"


async def test_joins_after_redis_lost_the_course_never_hang_a_small_pool(http, redis, stores,
                                                                         pool_of_one):
    course_id = await sold_out_course(http)
    joiners = [unique("joiner") for _ in range(3)]  # more than the pool has connections
    # The sweeper paused: nobody reloads the course before the joins do.
    async with SweeperPaused(redis), worker(stores, pool_of_one) as one:
        await redis.delete(*course_keys(course_id))

        joins = await answered(*(one.post(f"/v1/courses/{course_id}/waitlist",
                                          headers=resident(who)) for who in joiners))
        ready = await answered(one.get("/ready"))

    assert joins is not None and ready is not None, HUNG
    assert [j.status_code for j in joins] == [201, 201, 201], [j.text for j in joins]
    assert sorted(j.json()["position"] for j in joins) == [1, 2, 3]
    assert ready[0].status_code == 200
    waiting = await redis.zrange(course_keys(course_id)[3], 0, -1)
    assert sorted(waiting) == sorted(joiners)


async def test_a_starved_pool_answers_503_instead_of_hanging(http, stores, pool_of_one):
    course_id = await sold_out_course(http)
    async with worker(stores, pool_of_one) as one:
        taken = await pool_of_one.acquire()  # every connection of the worker is busy
        try:
            starved = await answered(one.get(f"/v1/courses/{course_id}/waitlist/me",
                                             headers=resident(unique("patient"))))
        finally:
            await pool_of_one.release(taken)
        after = await answered(one.get("/ready"))

    assert starved is not None and after is not None, HUNG
    assert (starved[0].status_code, starved[0].json()["code"]) == (503, "unavailable")
    assert after[0].status_code == 200
