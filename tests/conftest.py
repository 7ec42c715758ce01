"""Real Postgres, real Redis, real server processes.

With DATABASE_URL and REDIS_URL set, the tests use those stores (and flush that Redis
database); otherwise they start private ones from the pip-installed binaries. The service runs
as `python -m booking serve` with two workers, exactly as a user would start it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis, RedisCluster

from booking.core.auth import mint
from booking.core.embedded import EmbeddedStores
from booking.core.embedded_cluster import EmbeddedCluster
from booking.core.migrations import upgrade
from booking.core.signing import signed_headers
from booking.ops.rehearsal import address_of
from booking.ops.service import Service, ServiceError

SECRET = "test-secret-that-is-long-enough-for-hs256"
# Clients drop an idle connection before uvicorn does (its timeout_keep_alive is 5 s): a request
# sent on a connection the server is closing at that moment fails with a ReadError, and a POST
# is not retried.
KEEPALIVE_S = 2.0
PAYMENT_SECRET = "test-payment-secret-long-enough-for-hmac"


# BOOKING_TEST_REDIS=cluster runs the session on a private Redis Cluster (3 primaries, 3
# replicas) instead of one Redis: .ci/run runs the gate, race and recovery tests that way too.
ON_CLUSTER = os.environ.get("BOOKING_TEST_REDIS", "single") == "cluster"


@dataclass(frozen=True)
class Stores:
    database_url: str
    redis_url: str
    cluster: EmbeddedCluster | None = None


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    with contextlib.ExitStack() as stack:
        database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
        if not (database_url and (redis_url or ON_CLUSTER)):
            embedded = stack.enter_context(EmbeddedStores(tmp_path_factory.mktemp("stores")))
            database_url, redis_url = embedded.database_url, embedded.redis_url
        cluster = None
        if ON_CLUSTER:
            cluster = stack.enter_context(EmbeddedCluster(tmp_path_factory.mktemp("cluster")))
            redis_url = cluster.url
        yield Stores(database_url, str(redis_url), cluster)


def redis_client(stores: Stores, **options: Any) -> Redis:
    """A client of the session's Redis (a cluster client on a cluster)."""
    kind = Redis if stores.cluster is None else RedisCluster
    return kind.from_url(stores.redis_url, decode_responses=True, **options)


@pytest_asyncio.fixture(scope="session")
async def db(stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=10)
    async with pool.acquire() as conn:
        await upgrade(conn)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def redis(stores: Stores) -> AsyncIterator[Redis]:
    client = redis_client(stores)
    await client.flushdb()
    yield client
    await client.aclose()


# Makes Postgres refuse every booking of one course, as a broken disk would.
FAIL_INSERTS = """
CREATE OR REPLACE FUNCTION test_refuse_booking() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.course_id = {course_id} THEN RAISE EXCEPTION 'disk on fire'; END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_refuse_booking BEFORE INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION test_refuse_booking();
"""
STOP_FAILING = "DROP TRIGGER IF EXISTS test_refuse_booking ON bookings"


def service_env(stores: Stores, data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": stores.database_url, "REDIS_URL": stores.redis_url,
            "BOOKING_SECRET": SECRET, "BOOKING_PAYMENT_SECRET": PAYMENT_SECRET,
            "BOOKING_DATA_DIR": str(data_dir),
            "BOOKING_PENDING_TIMEOUT": "5", "BOOKING_RECONCILE_INTERVAL": "1",
            "BOOKING_RATE_RESIDENT": "60/10", "BOOKING_RATE_ADDRESS": "1000/10",
            "BOOKING_REDIS_CLUSTER": "1" if stores.cluster else "0", **extra}


def debian_tool(tool: str) -> str:
    """The path of `tool` (on PATH, or in /usr/sbin), its Debian package of the same name
    installed first by tests/install-debian.sh when missing (as .ci/run does)."""
    def found() -> str | None:
        sbin = Path("/usr/sbin") / tool
        return shutil.which(tool) or (str(sbin) if sbin.exists() else None)

    if found() is None:
        script = Path(__file__).with_name("install-debian.sh")
        subprocess.run(["bash", str(script), tool], check=True, timeout=600)
    path = found()
    assert path, f"tests/install-debian.sh could not install {tool}"
    return path


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "booking", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's service writes its stdout and stderr (its JSON log lines)."""
    return tmp_path_factory.mktemp("server") / "server.log"


@contextlib.contextmanager
def running_service(stores: Stores, log: Path, **extra: str) -> Iterator[str]:
    """`booking serve` on the test stores, its output in `log`; yields its base URL and stops
    it afterwards."""
    service = Service(service_env(stores, log.parent, **extra), log)
    try:
        service.start()
    except ServiceError as exc:
        pytest.fail(str(exc))
    try:
        yield service.base_url
    finally:
        service.stop()


@pytest.fixture(scope="session")
def server(stores: Stores, db: asyncpg.Pool, redis: Redis, server_log: Path) -> Iterator[str]:
    with running_service(stores, server_log, BOOKING_WORKERS="2", BOOKING_LOGIN_CODES="log",
                         BOOKING_DEMO="1") as base_url:
        yield base_url


def client_of(base_url: str, connections: int) -> httpx.AsyncClient:
    """An HTTP client for a service under test, keeping up to `connections` alive."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections,
                          keepalive_expiry=KEEPALIVE_S)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30)


@pytest_asyncio.fixture(scope="session")
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(server, 600) as client:
        yield client


def auth(role: str, sub: str, venue_id: int | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, role, sub, venue_id=venue_id)}"}


OPERATOR = auth("operator", "ops")


def resident(name: str) -> dict[str, str]:
    return auth("resident", name)


_counter = iter(range(1, 10**9))


def unique(prefix: str) -> str:
    """Names unique within this test run, so tests never see each other's residents."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


async def make_venue(http: httpx.AsyncClient, district: str = "Haidian") -> int:
    body = {"name": unique("venue"), "district": district, "address": "1 Test Road",
            "lat": 39.9, "lon": 116.4}
    response = await http.post("/v1/venues", json=body, headers=OPERATOR)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def course_body(venue_id: int, capacity: int, opens_in_s: float = -1,
                **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"title": unique("course"), "category": "music", "teacher": "Ms Li",
            "starts_at": (now + timedelta(days=7)).isoformat(),
            "ends_at": (now + timedelta(days=7, hours=2)).isoformat(),
            "capacity": capacity,
            "sales_open_at": (now + timedelta(seconds=opens_in_s)).isoformat(),
            "venue_id": venue_id, **extra}


async def make_course(http: httpx.AsyncClient, capacity: int, opens_in_s: float = -1,
                      venue_id: int | None = None, **extra: Any) -> dict[str, Any]:
    venue_id = venue_id or await make_venue(http)
    response = await http.post("/v1/courses", json=course_body(venue_id, capacity, opens_in_s,
                                                               **extra), headers=OPERATOR)
    assert response.status_code == 201, response.text
    return response.json()


async def grab(http: httpx.AsyncClient, course_id: int, who: str) -> httpx.Response:
    headers = {**resident(who), "X-Forwarded-For": address_of(who)}
    return await http.post(f"/v1/courses/{course_id}/bookings", headers=headers)


async def active_rows(db: asyncpg.Pool, course_id: int) -> int:
    """Bookings holding a seat: confirmed ones and holds of a paid course."""
    return await db.fetchval("SELECT count(*) FROM bookings WHERE course_id = $1 "
                             "AND booking_active(status)", course_id)


async def cancel(http: httpx.AsyncClient, booking_id: str, who: str) -> httpx.Response:
    return await http.delete(f"/v1/bookings/{booking_id}", headers=resident(who))


async def join_waitlist(http: httpx.AsyncClient, course_id: int, who: str) -> httpx.Response:
    return await http.post(f"/v1/courses/{course_id}/waitlist", headers=resident(who))


async def my_bookings(http: httpx.AsyncClient, who: str) -> list[dict[str, Any]]:
    response = await http.get("/v1/me/bookings", headers=resident(who))
    assert response.status_code == 200, response.text
    return response.json()


async def pay(http: httpx.AsyncClient, booking_id: str, amount_cents: int,
              provider_ref: str | None = None, secret: str = PAYMENT_SECRET) -> httpx.Response:
    """What the payment provider sends: the body signed with HMAC-SHA256."""
    body = json.dumps({"provider_ref": provider_ref or unique("ref"), "booking_id": booking_id,
                       "amount_cents": amount_cents, "status": "paid"}).encode()
    return await http.post("/v1/payments/callback", content=body,
                           headers=signed_headers(secret, body))


async def gate_left(redis: Redis, course_id: int) -> int:
    return int(await redis.hget(f"course:{{{course_id}}}:info", "left"))


async def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


class SweeperPaused:
    """`async with SweeperPaused(redis):` holds the sweeper's round lock, so that no round of any
    service process expires, resyncs or promotes over damage a test made on purpose before the
    test has looked at it. A round holds that lock from its start to its end, so taking it
    means no round is running (see booking/lifecycle/sweeper.py)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._token = unique("sweeper-paused")

    async def __aenter__(self) -> None:
        from booking.lifecycle.sweeper import RECONCILER_LOCK

        while not await self._redis.set(RECONCILER_LOCK, self._token, nx=True, px=30_000):
            await asyncio.sleep(0.05)

    async def __aexit__(self, *_: object) -> None:
        from booking.lifecycle.sweeper import RECONCILER_LOCK

        if await self._redis.get(RECONCILER_LOCK) == self._token:
            await self._redis.delete(RECONCILER_LOCK)


async def hammer(http: httpx.AsyncClient, course_id: int, lanes: int,
                 answers: list[httpx.Response], done: Any,
                 hammering: asyncio.Event | None = None, timeout: float = 30.0) -> None:
    """`lanes` racers grab the course back to back, each grab as a new resident (so no
    per-resident limit applies), appending every answer to `answers`, until `done()` is true
    after an answer (or `timeout` passes: then the test's assertions say what went missing).
    `hammering` is set once every lane has had an answer: from then on grabs are in flight."""
    deadline = time.monotonic() + timeout
    answered: set[int] = set()

    async def lane(n: int) -> None:
        while time.monotonic() < deadline:
            answers.append(await grab(http, course_id, unique("racer")))
            answered.add(n)
            if hammering is not None and len(answered) == lanes:
                hammering.set()
            if done():
                return

    await asyncio.gather(*(lane(n) for n in range(lanes)))


@contextlib.asynccontextmanager
async def private_database(stores: Stores, prefix: str = "private",
                           migrated: bool = True) -> AsyncIterator[str]:
    """A database of its own on the session's Postgres, migrated (or left empty, for a service
    to create the schema): yields its URL and drops it afterwards (closing whatever is still
    connected). No other service's sweeper reconciles its courses into another gate."""
    name = f"{prefix}_{unique('db').replace('-', '_')}"
    admin = await asyncpg.connect(stores.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(stores.database_url)._replace(path=f"/{name}"))
    try:
        if migrated:
            conn = await asyncpg.connect(url)
            try:
                await upgrade(conn)
            finally:
                await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


PRIVATE_REDIS_DB = 9


def private_redis_url(stores: Stores) -> str:
    """The session's Redis, database PRIVATE_REDIS_DB (a cluster has only one database: there,
    the session's own URL)."""
    if stores.cluster is not None:
        return stores.redis_url
    if stores.redis_url.startswith("unix://"):  # urlunsplit would drop the "//"
        return f"{stores.redis_url.partition('?')[0]}?db={PRIVATE_REDIS_DB}"
    return urlunsplit(urlsplit(stores.redis_url)._replace(path=f"/{PRIVATE_REDIS_DB}"))


@pytest_asyncio.fixture
async def private_stores(stores) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """An empty database of its own and a Redis database of its own: a sweeper running here
    touches nothing of the other tests (nor do their sweepers take its lock)."""
    async with private_database(stores) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        redis = Redis.from_url(stores.redis_url, db=PRIVATE_REDIS_DB, decode_responses=True)
        await redis.flushdb()
        try:
            yield pool, redis
        finally:
            await redis.flushdb()
            await redis.aclose()
            await pool.close()


LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


def lock_waiters(db: asyncpg.Pool, n: int) -> Any:
    """A `wait_for` predicate: at least `n` sessions wait for a lock (at a Barrier, or behind
    one)."""
    async def enough() -> bool:
        return await db.fetchval(LOCK_WAITERS) >= n
    return enough


class Barrier:
    """A test-only trigger (`create_sql`, which calls `pg_advisory_xact_lock_shared(key)` where
    it should stop) holds matching statements inside their transactions until `lift()`:

        async with Barrier(db, key, create_sql, drop_sql) as barrier:
            ...start requests, wait_for(lock_waiters(db, n))...
            await barrier.lift()
            answers = await gather(...)

    The trigger is dropped on the way out, once no transaction is inside (dropping a trigger
    locks the whole table)."""

    def __init__(self, db: asyncpg.Pool, key: int, create_sql: str, drop_sql: str) -> None:
        self._db, self._key, self._create, self._drop = db, key, create_sql, drop_sql
        self._conn: Any = None
        self._held = False

    async def __aenter__(self) -> Barrier:
        self._conn = await self._db.acquire()
        await self._conn.execute(self._create)
        await self._conn.execute("SELECT pg_advisory_lock($1)", self._key)
        self._held = True
        return self

    async def lift(self) -> None:
        if self._held:
            await self._conn.execute("SELECT pg_advisory_unlock($1)", self._key)
            self._held = False

    async def __aexit__(self, *_: object) -> None:
        try:
            await self.lift()
            await self._conn.execute(self._drop)
        finally:
            await self._db.release(self._conn)
