"""Numbered, forward-only schema migrations.

The migrations are the plain SQL files beside this module, `NNNN_name.sql`, applied in number
order; `schema_migrations` records each one applied. `schema.sql` is the whole current schema:
an empty database gets it in one step (and every migration recorded as applied), any other
database gets the migrations it lacks, each in its own transaction with its version row. A
database made before migrations existed (tables, but no version table) gets 0001, which is
idempotent and brings it to the schema of that day, and then the rest.

A Postgres advisory lock held around the whole upgrade lets several processes start at once:
the first applies what is missing, the others wait and then find nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import asyncpg

from booking.core.db import is_empty, schema_sql

# Advisory lock key ("booking" in ASCII); advisory locks are per database.
UPGRADE_LOCK = 0x626F6F6B696E67
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"
_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """How `booking db upgrade` names it, e.g. 0002_active_and_holds."""
        return f"{self.version:04d}_{self.name}"


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in order; numbered 1, 2, 3... without gaps."""
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n: {[m.label for m in found]}")
    return tuple(found)


def latest_version() -> int:
    return migrations()[-1].version


async def applied_versions(conn: asyncpg.Connection) -> set[int] | None:
    """The versions recorded, or None when the database has no version table yet."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    return {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def upgrade(conn: asyncpg.Connection) -> list[str]:
    """Bring the database to the latest schema; return the labels of the migrations applied
    (all of them on an empty database, where schema.sql is applied instead; [] if up to date).

    Must be called outside a transaction. Lifts the connection's statement timeout while it
    runs (a migration may rewrite a big table) and restores it afterwards."""
    await conn.execute("SET client_min_messages = warning; SET statement_timeout = 0")
    await conn.execute("SELECT pg_advisory_lock($1)", UPGRADE_LOCK)
    try:
        applied = await applied_versions(conn)
        if applied is None and await is_empty(conn):
            return await _create(conn)
        await conn.execute(VERSION_TABLE)
        missing = [m for m in migrations() if m.version not in (applied or set())]
        for migration in missing:
            await _apply(conn, migration)
        return [m.label for m in missing]
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", UPGRADE_LOCK)
        await conn.execute("RESET statement_timeout; RESET client_min_messages")


async def _create(conn: asyncpg.Connection) -> list[str]:
    """An empty database: schema.sql and every version row, in one transaction."""
    async with conn.transaction():
        await conn.execute(schema_sql())
        await conn.execute(VERSION_TABLE)
        await conn.executemany(RECORD, [(m.version, m.name) for m in migrations()])
    return [m.label for m in migrations()]


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    """One migration and its version row, in one transaction: all of it or none."""
    async with conn.transaction():
        await conn.execute(migration.sql)
        await conn.execute(RECORD, migration.version, migration.name)
