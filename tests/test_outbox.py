"""The outbox dispatcher against real Postgres and a real HTTP receiver on 127.0.0.1.

These tests run on a private copy of the outbox table in a schema of their own: the session's
service processes run dispatchers on the shared table, which would take these rows (and these
dispatchers would take the rows of other tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from conftest import Stores, unique

from booking.ledger.outbox import (
    ID_HEADER,
    add_notification,
    backoff_s,
    dispatch_forever,
    dispatch_once,
)


@dataclass
class Receiver:
    """A webhook that records what it got; it can fail the first requests or stall from one on.

    A stalled request waits until `release` is set, then gets 503: it is never acknowledged."""

    fail_first: int = 0
    stall_from: int | None = None  # 1-based number of the first request to stall
    together: int = 0  # hold the first requests until this many are in flight at once
    url: str = ""
    seen: list[int] = field(default_factory=list)
    delivered: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    met: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while (request := await read_request(reader)) is not None:
                status = await self.answer(*request)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def answer(self, headers: dict[str, str], body: bytes) -> int:
        notification_id = int(headers[ID_HEADER.lower()])
        self.seen.append(notification_id)
        if len(self.seen) >= self.together:
            self.met.set()
        await self.met.wait()
        if self.stall_from is not None and len(self.seen) >= self.stall_from:
            self.stalled.set()
            await self.release.wait()
            return 503
        if len(self.seen) <= self.fail_first:
            return 500
        self.delivered.append((notification_id, json.loads(body)))
        return 200

    def delivered_ids(self) -> list[int]:
        return [notification_id for notification_id, _ in self.delivered]


async def read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes] | None:
    """One HTTP/1.1 request's headers and body; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode().split("\r\n")[1:]
    headers = {k.strip().lower(): v.strip() for k, _, v in (li.partition(":") for li in lines)}
    return headers, await reader.readexactly(int(headers.get("content-length", "0")))


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/notify"
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.close()
        for writer in receiver.writers:
            writer.close()
        await server.wait_closed()


@pytest_asyncio.fixture(scope="module")
async def private_pool(db: asyncpg.Pool, stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose `outbox` is a private table shaped like the real one (LIKE ... ALL)."""
    schema = f"test_outbox_{os.getpid()}"
    await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; "
                     f"CREATE TABLE {schema}.outbox (LIKE outbox INCLUDING ALL)")
    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=6,
                                     server_settings={"search_path": schema})
    yield pool
    await pool.close()
    await db.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest_asyncio.fixture
async def pool(private_pool: asyncpg.Pool) -> asyncpg.Pool:
    await private_pool.execute("TRUNCATE outbox")
    return private_pool


async def add_rows(pool: asyncpg.Pool, count: int, kind: str = "promoted") -> dict[int, str]:
    """`count` notifications, written in one transaction as the booking code does; id -> who."""
    async with pool.acquire() as conn, conn.transaction():
        for n in range(count):
            await add_notification(conn, kind, unique("resident"), {"course_id": n, "seat": n})
        rows = await conn.fetch("SELECT id, resident_id FROM outbox ORDER BY id")
    return {row["id"]: row["resident_id"] for row in rows}


async def rows(pool: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    records = await pool.fetch(
        "SELECT *, next_attempt_at > now() AS waiting FROM outbox ORDER BY id")
    return {row["id"]: row for row in records}


async def drain(pool: asyncpg.Pool, receiver: Receiver) -> None:
    async with httpx.AsyncClient() as client:
        while await dispatch_once(pool, client, receiver.url):
            pass


async def test_delivered_rows_are_marked_sent_and_posted_once(pool: asyncpg.Pool) -> None:
    residents = await add_rows(pool, 5)
    async with receiving(Receiver()) as receiver, httpx.AsyncClient() as client:
        assert await dispatch_once(pool, client, receiver.url) == 5
        assert await dispatch_once(pool, client, receiver.url) == 0
    assert sorted(receiver.delivered_ids()) == sorted(residents)
    stored = await rows(pool)
    assert all(row["sent_at"] is not None and row["attempts"] == 0 for row in stored.values())
    for notification_id, body in receiver.delivered:
        row = stored[notification_id]
        assert body == {"id": notification_id, "kind": "promoted",
                        "resident_id": residents[notification_id],
                        "payload": json.loads(row["payload"]),
                        "created_at": body["created_at"]}
        assert set(body["payload"]) == {"course_id", "seat"}
        assert datetime.fromisoformat(body["created_at"]) == row["created_at"]


async def test_failed_rows_wait_and_do_not_block_the_others(pool: asyncpg.Pool) -> None:
    ids = sorted(await add_rows(pool, 3))
    async with receiving(Receiver(fail_first=2)) as receiver, httpx.AsyncClient() as client:
        assert await dispatch_once(pool, client, receiver.url) == 1  # the third row got through
        stored = await rows(pool)
        for failed in ids[:2]:
            row = stored[failed]
            assert row["sent_at"] is None and row["waiting"]
            assert row["attempts"] == 1 and "500" in row["last_error"]
        assert stored[ids[2]]["sent_at"] is not None
        assert await dispatch_once(pool, client, receiver.url) == 0  # not due yet

        await pool.execute("UPDATE outbox SET next_attempt_at = now() WHERE sent_at IS NULL")
        assert await dispatch_once(pool, client, receiver.url) == 2
    stored = await rows(pool)
    assert all(row["sent_at"] is not None for row in stored.values())
    assert sorted(receiver.delivered_ids()) == ids
    assert receiver.seen == [*ids, *ids[:2]]


async def test_unreachable_receiver_counts_as_a_failed_attempt(pool: asyncpg.Pool) -> None:
    (notification_id,) = await add_rows(pool, 1)
    async with receiving(Receiver()) as receiver:
        url = receiver.url  # closed when we post to it
    assert await dispatch_once(pool, None, url) == 0
    row = (await rows(pool))[notification_id]
    assert row["sent_at"] is None and row["waiting"] and row["attempts"] == 1
    assert row["last_error"] == "ConnectError while posting to the webhook"


def test_backoff_doubles_from_one_second_up_to_five_minutes() -> None:
    assert 1.0 <= backoff_s(0) <= 1.2
    assert 2.0 <= backoff_s(1) <= 2.4
    assert 64.0 <= backoff_s(6) <= 76.8
    assert backoff_s(9) == backoff_s(1000) == 300.0


async def test_killed_dispatcher_loses_nothing_and_repeats_nothing(pool: asyncpg.Pool) -> None:
    ids = sorted(await add_rows(pool, 6))
    async with receiving(Receiver(stall_from=4)) as stalling:
        task = asyncio.create_task(dispatch_forever(pool, stalling.url, interval_s=0.05))
        await asyncio.wait_for(stalling.stalled.wait(), 30)  # the 4th POST is in flight
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stored = await rows(pool)
    assert sorted(stored) == ids  # nothing lost
    # Sent are exactly the rows the receiver acknowledged; the one in flight rolled back.
    assert [i for i in ids if stored[i]["sent_at"] is not None] == stalling.delivered_ids()
    assert stalling.delivered_ids() == ids[:3]
    assert all(row["attempts"] == 0 for row in stored.values())

    async with receiving(Receiver()) as healthy:
        await drain(pool, healthy)
    arrivals = Counter(stalling.delivered_ids() + healthy.delivered_ids())
    assert sorted(arrivals) == ids
    assert sum(1 for times in arrivals.values() if times > 1) == 0


async def test_concurrent_dispatchers_deliver_each_row_once(pool: asyncpg.Pool) -> None:
    ids = await add_rows(pool, 200)
    # The first POST is held until a second one arrives: the other dispatcher must get past
    # the row in flight (SKIP LOCKED) and take part while the first waits.
    async with receiving(Receiver(together=2)) as receiver, httpx.AsyncClient() as client:
        first, second = await asyncio.wait_for(asyncio.gather(
            dispatch_once(pool, client, receiver.url, batch=500),
            dispatch_once(pool, client, receiver.url, batch=500)), 60)
    assert first + second == 200
    assert first > 0 and second > 0  # both took part
    assert sorted(receiver.seen) == sorted(ids)  # every row posted exactly once
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_without_webhook_rows_are_logged_without_personal_data(
        pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    residents = await add_rows(pool, 3, kind="course_cancelled")
    caplog.set_level(logging.INFO, logger="booking.ledger.outbox")
    assert await dispatch_once(pool, None, None) == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "booking.ledger.outbox"]
    assert len(lines) == 3
    for notification_id, who in residents.items():
        assert sum(f"notification {notification_id} " in line for line in lines) == 1
        assert not any(who in line or "course_id" in line for line in lines)
    assert all("course_cancelled" in line for line in lines)
