"""Postgres: the connection pool and the schema (migrations: booking/core/migrations)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext

STATEMENT_TIMEOUT_MS = 5_000

# How much longer the client waits for a statement than Postgres lets it run. Postgres stops a
# statement at its statement_timeout and says so (QueryCanceledError: surely not written, so a
# grab gives its seat back at once). A client timeout at the same moment raced that answer and,
# when it won, left the outcome unknown: the seat stayed pending until the reconciler judged it,
# and the resident's retries were answered 503 meanwhile. The client's own timeout is for a
# server that no longer answers at all.
CLIENT_TIMEOUT_GRACE_S = 1.0


def schema_sql() -> str:
    """schema.sql (the whole current schema, for an empty database) from the repository
    (editable install) or from the installed package."""
    beside_repo = Path(__file__).resolve().parent.parent.parent / "schema.sql"
    if beside_repo.exists():
        return beside_repo.read_text()
    return resources.files("booking").joinpath("schema.sql").read_text()


class DeadlinePool(asyncpg.Pool):
    """asyncpg's Pool, with a deadline on every wait for a connection.

    `Pool.fetch`, `fetchrow`, `fetchval` and `execute` call `self.acquire()` with no timeout, so
    on a starved pool they would wait for ever (and a request with them). Here `acquire` falls
    back to `acquire_timeout_s`, and a starved pool raises TimeoutError: 503 `unavailable`."""

    __slots__ = ("acquire_timeout_s",)

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(database_url: str, size: int,
                      statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
                      acquire_timeout_s: float | None = None) -> asyncpg.Pool:
    """A pool of `size` connections whose statements Postgres stops after
    `statement_timeout_ms` (the client gives up CLIENT_TIMEOUT_GRACE_S later) and whose waits
    for a connection stop after `acquire_timeout_s` (default: the statement timeout, so a
    request waits at most that long for each of the two). Built like asyncpg.create_pool."""
    pool = DeadlinePool(
        database_url,
        min_size=min(2, size),
        max_size=size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout_s=(statement_timeout_ms / 1000 if acquire_timeout_s is None
                           else acquire_timeout_s),
        command_timeout=statement_timeout_ms / 1000 + CLIENT_TIMEOUT_GRACE_S,
        server_settings={"statement_timeout": str(statement_timeout_ms),
                         "application_name": "booking"},
    )
    return await pool


async def is_empty(conn: asyncpg.Connection) -> bool:
    """No booking tables yet (a database made before migrations has them)."""
    return await conn.fetchval("SELECT to_regclass('bookings') IS NULL")

