"""Notifications to residents: written with the change that caused them, delivered afterwards.

`add_notification` inserts an outbox row inside the caller's transaction, so a notification
exists if and only if its booking change committed. The dispatcher then delivers due rows to
the webhook (or, with no webhook configured, to the log) and marks them sent.

Every worker process may run `dispatch_forever`: a row is claimed with `FOR UPDATE SKIP LOCKED`
and stays locked until its outcome is committed, so no two dispatchers ever take the same row.

Delivery is at least once. A row is marked sent only after the receiver answered 2xx, in the
transaction that claimed it; if the process dies (or the task is cancelled) before that commit,
the transaction rolls back and the row is delivered again later. Receivers drop such repeats by
the `X-Booking-Notification-Id` header. Each row gets a transaction of its own, rather than one
per batch, so the repeat window is the single row in flight, not every row of a batch answered
so far; it also keeps a transaction open for at most one POST (5 s) instead of up to a batch of
them. The price is a few more round trips to Postgres per notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import asyncpg
import httpx
import msgspec
from prometheus_client import Counter

from booking.core.observability import STORE_ERRORS

log = logging.getLogger("booking.ledger.outbox")

SENT = Counter("booking_outbox_sent_total", "Outbox notifications marked sent")
FAILURES = Counter("booking_outbox_failures_total", "Failed outbox delivery attempts")

POST_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 300.0
ID_HEADER = "X-Booking-Notification-Id"

INSERT = """
INSERT INTO outbox (kind, resident_id, payload) VALUES ($1, $2, $3::jsonb)
"""
CLAIM = """
SELECT id, kind, resident_id, payload::text AS payload, created_at, attempts
FROM outbox
WHERE sent_at IS NULL AND next_attempt_at <= now()
ORDER BY id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
# clock_timestamp(), not now(): now() is the start of the transaction, before the POST.
MARK_SENT = "UPDATE outbox SET sent_at = clock_timestamp() WHERE id = $1"
MARK_FAILED = """
UPDATE outbox
SET attempts = attempts + 1,
    next_attempt_at = clock_timestamp() + make_interval(secs => $2),
    last_error = $3
WHERE id = $1
"""


async def add_notification(conn: asyncpg.Connection, kind: str, resident_id: str,
                           payload: dict[str, object]) -> None:
    """Queue one notification; call it inside the transaction of the change that caused it."""
    await conn.execute(INSERT, kind, resident_id, msgspec.json.encode(payload).decode())


def backoff_s(attempts: int) -> float:
    """Delay before the next try, after `attempts` earlier failures: 1 s doubling, capped.

    Up to 20 % jitter spreads out rows that failed together (a receiver outage)."""
    base = BACKOFF_FIRST_S * 2 ** min(attempts, 16)
    return min(BACKOFF_CAP_S, base * random.uniform(1.0, 1.2))


def _body(row: asyncpg.Record) -> bytes:
    return msgspec.json.encode({
        "id": row["id"], "kind": row["kind"], "resident_id": row["resident_id"],
        "payload": msgspec.Raw(row["payload"].encode()), "created_at": row["created_at"]})


async def _deliver(client: httpx.AsyncClient | None, webhook_url: str | None,
                   row: asyncpg.Record) -> str | None:
    """Hand one notification over; None when it was accepted, else why not (one sentence)."""
    if webhook_url is None or client is None:
        # Id and kind only: resident ids and payloads are personal data and stay out of logs.
        log.info("notification %d (%s) logged, no webhook configured", row["id"], row["kind"])
        return None
    headers = {ID_HEADER: str(row["id"]), "Content-Type": "application/json"}
    try:
        response = await client.post(webhook_url, content=_body(row), headers=headers,
                                     timeout=POST_TIMEOUT_S)
    except Exception as exc:  # any way of not getting an answer is a failed attempt
        return f"{type(exc).__name__} while posting to the webhook"
    if response.is_success:
        return None
    return f"the webhook answered HTTP {response.status_code}"


async def _dispatch_next(pool: asyncpg.Pool, client: httpx.AsyncClient | None,
                         webhook_url: str | None) -> bool | None:
    """Claim, deliver and settle the oldest due row; True if sent, None if nothing was due."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(CLAIM)
        if row is None:
            return None
        error = await _deliver(client, webhook_url, row)
        if error is None:
            await conn.execute(MARK_SENT, row["id"])
        else:
            await conn.execute(MARK_FAILED, row["id"], backoff_s(row["attempts"]), error)
    (SENT if error is None else FAILURES).inc()
    return error is None


async def dispatch_once(pool: asyncpg.Pool, client: httpx.AsyncClient | None,
                        webhook_url: str | None, *, batch: int = 50) -> int:
    """Handle up to `batch` due rows, one transaction each; returns how many were marked sent."""
    if client is None and webhook_url is not None:
        async with httpx.AsyncClient() as own:
            return await dispatch_once(pool, own, webhook_url, batch=batch)
    sent = 0
    for _ in range(batch):
        outcome = await _dispatch_next(pool, client, webhook_url)
        if outcome is None:
            break
        sent += outcome
    return sent


async def _round(pool: asyncpg.Pool, client: httpx.AsyncClient | None,
                 webhook_url: str | None, batch: int) -> int:
    """One dispatch_once that survives a store outage (logged; the rows wait in Postgres)."""
    try:
        return await dispatch_once(pool, client, webhook_url, batch=batch)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
            STORE_ERRORS.labels("postgres").inc()
        log.warning("outbox dispatch round failed: %s: %s", type(exc).__name__, exc)
        return 0


async def dispatch_forever(pool: asyncpg.Pool, webhook_url: str | None,
                           interval_s: float = 1.0, *, batch: int = 50) -> None:
    """Deliver due notifications until cancelled; at once again after a full batch.

    Cancel it (and await it) before closing the pool: a row in flight rolls back."""
    client = httpx.AsyncClient() if webhook_url else None
    async with client or contextlib.nullcontext():
        while True:
            if await _round(pool, client, webhook_url, batch) < batch:
                await asyncio.sleep(interval_s)
