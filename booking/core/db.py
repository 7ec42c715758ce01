"""Postgres: the connection pool and the schema (migrations: booking/core/migrations)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import asyncpg

STATEMENT_TIMEOUT_MS = 5_000


def schema_sql() -> str:
    """schema.sql (the whole current schema, for an empty database) from the repository
    (editable install) or from the installed package."""
    beside_repo = Path(__file__).resolve().parent.parent.parent / "schema.sql"
    if beside_repo.exists():
        return beside_repo.read_text()
    return resources.files("booking").joinpath("schema.sql").read_text()


async def create_pool(database_url: str, size: int,
                      statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url,
        min_size=min(2, size),
        max_size=size,
        command_timeout=statement_timeout_ms / 1000,
        server_settings={"statement_timeout": str(statement_timeout_ms),
                         "application_name": "booking"},
    )


async def is_empty(conn: asyncpg.Connection) -> bool:
    """No booking tables yet (a database made before migrations has them)."""
    return await conn.fetchval("SELECT to_regclass('bookings') IS NULL")

