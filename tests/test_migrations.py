"""Numbered migrations: every road to the current schema ends at the same schema.

Each test makes fresh databases of its own on the test server (dropped afterwards), builds them
one way or another, and compares their catalogs: columns, constraints, indexes, functions and
triggers, as Postgres itself prints them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from itertools import count
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

from booking.core.db import schema_sql
from booking.core.migrations import latest_version, migrations, upgrade

CATALOG = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attidentity, a.attgenerated
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1""",
}

# A database of the first release, before holds: what 0001's upgrade block exists for.
BEFORE_HOLDS = """
ALTER TABLE bookings DROP CONSTRAINT bookings_held_expires;
ALTER TABLE courses DROP CONSTRAINT courses_hold_minutes_range;
ALTER TABLE bookings DROP COLUMN expires_at, DROP COLUMN paid_at;
ALTER TABLE courses DROP COLUMN hold_minutes, DROP COLUMN cancel_deadline;
ALTER TABLE bookings DROP CONSTRAINT bookings_status_known,
    ADD CONSTRAINT bookings_status_known CHECK (status IN ('confirmed', 'cancelled'));
DROP INDEX bookings_one_active_per_resident;
CREATE UNIQUE INDEX bookings_one_active_per_resident
    ON bookings (course_id, resident_id) WHERE status = 'confirmed';
INSERT INTO venues (name, district, address, lat, lon) VALUES ('v', 'd', 'a', 1, 1);
INSERT INTO courses (venue_id, title, category, teacher, starts_at, ends_at, capacity,
                     sales_open_at)
    VALUES (1, 't', 'c', 'x', now() + interval '1 day', now() + interval '2 days', 5, now());
INSERT INTO bookings (id, course_id, resident_id) VALUES (gen_random_uuid(), 1, 'r1');
"""

_names = count(1)


class Databases:
    """Empty databases on the test server, made on demand and dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.names: list[str] = []
        self.connections: list[asyncpg.Connection] = []

    async def new(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"migrations_{os.getpid()}_{next(_names)}"
        admin = await asyncpg.connect(self.server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        self.names.append(name)
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{name}"))

    async def connect(self, url: str | None = None) -> asyncpg.Connection:
        """A connection to `url`, or to a new database."""
        conn = await asyncpg.connect(url or await self.new())
        self.connections.append(conn)
        return conn

    async def drop_all(self) -> None:
        for conn in self.connections:
            await conn.close()
        admin = await asyncpg.connect(self.server_url)
        try:
            for name in self.names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture
async def databases(stores) -> AsyncIterator[Databases]:
    made = Databases(stores.database_url)
    yield made
    await made.drop_all()


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {what: [tuple(row) for row in await conn.fetch(sql)] for what, sql in CATALOG.items()}


async def versions(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [tuple(r) for r in await conn.fetch(
        "SELECT version, name FROM schema_migrations ORDER BY version")]


def labels() -> list[str]:
    return [m.label for m in migrations()]


async def apply_raw(conn: asyncpg.Connection, sql: str) -> None:
    await conn.execute("SET client_min_messages = warning")
    await conn.execute(sql)


async def test_migrations_build_the_schema_of_schema_sql(databases: Databases):
    fresh, migrated = await databases.connect(), await databases.connect()

    assert await upgrade(fresh) == labels()  # empty: schema.sql, every migration recorded
    await apply_raw(migrated, migrations()[0].sql)  # made before migrations existed
    assert await upgrade(migrated) == labels()  # 0001 again (idempotent), then every later one

    assert await catalog(migrated) == await catalog(fresh)
    assert await versions(migrated) == await versions(fresh)
    assert [v for v, _ in await versions(fresh)] == list(range(1, latest_version() + 1))


async def test_a_database_from_before_holds_is_brought_up_to_date(databases: Databases):
    fresh, old = await databases.connect(), await databases.connect()
    await upgrade(fresh)
    await apply_raw(old, migrations()[0].sql)
    await apply_raw(old, BEFORE_HOLDS)

    assert await upgrade(old) == labels()

    assert await catalog(old) == await catalog(fresh)
    row = await old.fetchrow("SELECT active_bookings, hold_minutes FROM courses")
    assert tuple(row) == (1, 10)


async def test_upgrading_twice_changes_nothing(databases: Databases):
    conn = await databases.connect()
    await upgrade(conn)
    before, recorded = await catalog(conn), await versions(conn)

    assert await upgrade(conn) == []
    assert await catalog(conn) == before and await versions(conn) == recorded


async def test_schema_sql_alone_matches_the_upgraded_schema(databases: Databases):
    """schema.sql stays applicable by hand (the version table aside)."""
    by_hand, upgraded = await databases.connect(), await databases.connect()
    await apply_raw(by_hand, schema_sql())
    await apply_raw(by_hand, schema_sql())  # and twice
    await upgrade(upgraded)
    await upgraded.execute("DROP TABLE schema_migrations")

    assert await catalog(by_hand) == await catalog(upgraded)


async def test_concurrent_upgrades_of_an_empty_database_both_succeed(databases: Databases):
    url = await databases.new()
    first, second = await databases.connect(url), await databases.connect(url)

    results = await asyncio.gather(upgrade(first), upgrade(second))

    assert sorted(results) == [[], labels()]  # one applied everything, the other found it done
    assert [v for v, _ in await versions(first)] == list(range(1, latest_version() + 1))


async def test_active_queries_use_the_partial_unique_index(db):
    """booking_active() is inlined: the planner proves the index predicate from it, and from the
    literal spelling the service modules still use, in custom and in generic plans."""
    async with db.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                for active in ("booking_active(status)", "status IN ('confirmed', 'held')"):
                    plan = await conn.fetch(
                        "EXPLAIN SELECT id FROM bookings WHERE course_id = $1 "
                        f"AND resident_id = $2 AND {active}", 1, "someone")
                    text = "\n".join(row[0] for row in plan)
                    assert "bookings_one_active_per_resident" in text, (mode, active, text)
        finally:
            await conn.execute("RESET enable_seqscan; RESET plan_cache_mode")
