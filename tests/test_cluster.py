"""The service on a Redis Cluster (3 primaries, 3 replicas, private to this module): every
script keeps to one slot, scripts come back after SCRIPT FLUSH on every node, and a primary
killed mid-rush costs only its own shard's courses, until its replica has taken over.

The gate, race and recovery tests of the suite also run on a cluster: the last test here runs
them again in a pytest of their own with BOOKING_TEST_REDIS=cluster (see conftest.py), on a
database of their own, so the README's one test command covers both layouts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from conftest import (
    Stores,
    active_rows,
    client_of,
    grab,
    make_course,
    make_venue,
    private_database,
    run_cli,
    running_service,
    service_env,
    unique,
    wait_for,
)
from redis.asyncio import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from booking.core.embedded_cluster import EmbeddedCluster
from booking.core.stores import open_redis
from booking.seats import SeatGate, course_keys
from booking.seats.scripts import load_script, run_many

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest_asyncio.fixture(scope="module")
async def cluster_stores(stores: Stores, cluster: EmbeddedCluster) -> AsyncIterator[Stores]:
    async with private_database(stores, "cluster") as url:
        yield Stores(url, cluster.url, cluster)


@pytest.fixture(scope="module")
def cluster_server(cluster_stores: Stores, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cluster-server") / "server.log"
    with running_service(cluster_stores, log, BOOKING_WORKERS="2") as base_url:
        yield base_url


@pytest_asyncio.fixture
async def http(cluster_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(cluster_server, 200) as client:
        yield client


@pytest_asyncio.fixture
async def ledger(cluster_stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(cluster_stores.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest_asyncio.fixture
async def client(cluster: EmbeddedCluster) -> AsyncIterator[RedisCluster]:
    redis = open_redis(cluster.url, cluster=True)
    yield redis
    await redis.aclose()


async def courses_on_every_primary(http: httpx.AsyncClient, cluster: EmbeddedCluster,
                                   capacity: int) -> dict[int, list[int]]:
    """Courses until every primary serves at least one: node port -> course ids."""
    venue_id = await make_venue(http)
    served: dict[int, list[int]] = {}
    while len(served) < len([n for n in cluster.nodes if n.process]) // 2:
        course = await make_course(http, capacity=capacity, venue_id=venue_id)
        node = cluster.primary_of(course_keys(course["id"])[0])
        served.setdefault(node.port, []).append(course["id"])
    return served


async def test_a_rush_on_a_cluster_sells_each_seat_once(http, ledger, cluster):
    """200 residents at once on a 10-seat course of each primary: 10 bookings each, the rest
    sold out, Postgres and the gate agree."""
    served = await courses_on_every_primary(http, cluster, capacity=10)
    course_ids = [ids[0] for ids in served.values()]
    answers = await asyncio.gather(*(grab(http, course_id, unique("rusher"))
                                     for course_id in course_ids for _ in range(200)))
    for i, course_id in enumerate(course_ids):
        mine = answers[i * 200:(i + 1) * 200]
        assert Counter(a.status_code for a in mine) == {201: 10, 409: 190}
        assert {a.json()["code"] for a in mine if a.status_code == 409} == {"sold_out"}
        assert await active_rows(ledger, course_id) == 10
    seats = await http.get("/v1/courses/" + str(course_ids[0]))
    assert seats.json()["seats_left"] == 0


async def test_a_script_whose_keys_cross_slots_fails_loudly(client):
    """Two courses' keys in one call are refused (by the cluster client, or by the node in a
    pipeline), never run half-way."""
    gate = SeatGate(client)
    grab_script = load_script(client, "booking.seats", "grab")
    crossing = [*course_keys(1)[:2], *course_keys(2)[2:]]
    with pytest.raises((RedisClusterException, ClusterCrossSlotError), match=r"same.*slot"):
        await grab_script(keys=crossing, args=["r", "b"])
    [reply] = await run_many(client, grab_script, [(crossing, ("r", "b"))])
    assert isinstance(reply, ClusterCrossSlotError), reply
    await gate.close()


async def test_scripts_come_back_after_script_flush_on_every_node(http, ledger, cluster):
    served = await courses_on_every_primary(http, cluster, capacity=5)
    for node in cluster.nodes:
        node.client().script_flush()
    for ids in served.values():
        assert (await grab(http, ids[0], unique("after-flush"))).status_code == 201
        assert await active_rows(ledger, ids[0]) == 1


async def test_a_primary_killed_mid_rush_costs_only_its_own_shard(http, ledger, cluster,
                                                                   cluster_stores, tmp_path):
    """While one primary is dead, grabs of courses on the other primaries are answered and
    never fail; its own courses answer 201 or 503 (the client rides out what it can) and take
    grabs again once its replica has taken over; nothing is oversold and, once reconciled,
    the gate agrees with the ledger."""
    served = await courses_on_every_primary(http, cluster, capacity=1000)
    victim_port = next(iter(served))
    victim = next(node for node in cluster.nodes if node.port == victim_port)
    hit = served[victim_port][0]
    others = [ids[0] for port, ids in served.items() if port != victim_port]
    answers: dict[str, list[tuple[float, int]]] = {"victim": [], "others": []}
    stop = asyncio.Event()

    async def rush(course_id: int, side: str) -> None:
        while not stop.is_set():
            status = (await grab(http, course_id, unique("crowd"))).status_code
            answers[side].append((time.monotonic(), status))

    lanes = [asyncio.create_task(rush(course_id, side)) for course_id, side in
             [(hit, "victim"), (hit, "victim"), *((cid, "others") for cid in others
                                                  for _ in range(2))]]
    try:
        await wait_for(lambda: _answered_some(ledger, [hit, *others]))
        down_at = time.monotonic()
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_settled)  # its replica has taken over
        up_at = time.monotonic()
        await wait_for(lambda: _grabbable(http, hit))
    finally:
        stop.set()
        await asyncio.gather(*lanes)
        await asyncio.to_thread(cluster.restart, victim)

    after_kill = {side: [status for at, status in seen if at > down_at]
                  for side, seen in answers.items()}
    assert set(after_kill["others"]) == {201}, after_kill  # no grab of another shard failed
    assert any(down_at < at < up_at for at, _ in answers["others"])  # nor waited for it
    assert set(after_kill["victim"]) <= {201, 503}, after_kill
    for course_id in [hit, *others]:
        assert await active_rows(ledger, course_id) <= 1000
    env = service_env(cluster_stores, tmp_path)
    assert run_cli(env, "reconcile").returncode == 0
    checked = run_cli(env, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def _answered_some(ledger: asyncpg.Pool, course_ids: list[int]) -> bool:
    counts = [await active_rows(ledger, course_id) for course_id in course_ids]
    return all(count >= 3 for count in counts)


async def _grabbable(http: httpx.AsyncClient, course_id: int) -> bool:
    return (await grab(http, course_id, unique("probe"))).status_code == 201


ON_BOTH_LAYOUTS = ["tests/test_races.py", "tests/test_recovery.py", "tests/test_gate_lost.py",
                   "tests/test_gate_memory.py", "tests/test_term_cap.py",
                   "tests/test_ratelimit.py"]


async def test_the_gate_race_and_recovery_tests_pass_on_a_cluster(stores, tmp_path):
    """The single-Redis session runs these files as well; here they run on a private cluster
    of their own (conftest's BOOKING_TEST_REDIS=cluster) and a database of their own."""
    async with private_database(stores, "cluster") as database_url:
        env = {**os.environ, "BOOKING_TEST_REDIS": "cluster", "DATABASE_URL": database_url,
               "TMPDIR": str(tmp_path)}
        env.pop("REDIS_URL", None)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *ON_BOTH_LAYOUTS], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
