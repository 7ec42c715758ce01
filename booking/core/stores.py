"""Postgres and Redis, opened and closed in one place for the app and for every tool.

`running` gives the stores named by the settings, or starts private embedded ones when
DATABASE_URL / REDIS_URL are unset. `connected` opens a pool and a Redis client on them and
closes both afterwards, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.maint_notifications import MaintNotificationsConfig

from booking.core.db import STATEMENT_TIMEOUT_MS, create_pool
from booking.core.redis_nodes import close_nodes
from booking.core.settings import ConfigError, Settings

RedisClient = Redis | RedisCluster  # every key a script touches shares one slot either way


@dataclass(frozen=True, slots=True)
class Stores:
    pool: asyncpg.Pool
    redis: RedisClient


def open_redis(url: str, *, cluster: bool = False, max_connections: int = 1024) -> RedisClient:
    """A Redis client for one process. The plain pool is a fifth cheaper per call than the
    blocking one; past `max_connections` concurrent calls a request fails with 503. With
    `cluster`, `url` names any node of a Redis Cluster and the client finds the rest (and the
    new primary after a failover) by itself."""
    if cluster:
        # No maintenance notifications (a managed service's feature): their handshake on a
        # fresh connection to a node dying mid-connect raised AttributeError inside redis-py.
        return RedisCluster.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            max_connections=max_connections,
            maint_notifications_config=MaintNotificationsConfig(enabled=False))
    pool = ConnectionPool.from_url(url, decode_responses=True, max_connections=max_connections,
                                   socket_timeout=5, socket_connect_timeout=5)
    return Redis.from_pool(pool)


def node_client(redis: RedisClient, *, decode_responses: bool = True) -> Redis:
    """A plain client of its own on one server of `redis`, for pub/sub: a cluster delivers
    every PUBLISH to every node, so any node will do (a random known one, to spread
    subscribers; a caller whose node died asks again). The caller closes it."""
    if isinstance(redis, RedisCluster):
        nodes = redis.get_nodes() or list(redis.nodes_manager.startup_nodes.values())
        node = random.choice(nodes)
        return Redis(host=node.host, port=node.port, decode_responses=decode_responses,
                     socket_connect_timeout=5)
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": decode_responses}
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs))


async def close_redis(redis: RedisClient) -> None:
    """Close a client from `open_redis` (and a cluster's plain clients of its nodes)."""
    if isinstance(redis, RedisCluster):
        await close_nodes(redis)
    await redis.aclose()


async def primary_clients(redis: RedisClient) -> list[Redis]:
    """A plain client of its own on every primary of `redis` (one: a single server), as the
    cluster says now (asked again at every call, so a caller after a failover finds the new
    primary). The caller closes them."""
    if not isinstance(redis, RedisCluster):
        return [node_client(redis)]
    await redis.nodes_manager.initialize()
    name = redis.nodes_manager.connection_kwargs.get("client_name")
    return [Redis(host=node.host, port=node.port, decode_responses=True, client_name=name,
                  socket_connect_timeout=5) for node in redis.get_primaries()]


def write_budget_ms(settings: Settings) -> int:
    """How long a write may wait for a connection, and its statement may run: a quarter of the
    pending timeout each (at most the statement timeout), so a write is over, one way or the
    other, well before the reconciler may judge its seat stale."""
    return int(min(STATEMENT_TIMEOUT_MS, settings.pending_timeout_s / 4 * 1000))


async def open_pool(settings: Settings, size: int = 2,
                    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> asyncpg.Pool:
    """A Postgres pool (statements and waits for a connection each stop after
    `statement_timeout_ms`); a database that does not answer is a ConfigError (one sentence)."""
    if not settings.database_url:
        raise ConfigError("DATABASE_URL must be set; `booking serve` sets it for you.")
    try:
        return await create_pool(settings.database_url, size, statement_timeout_ms)
    except (OSError, ConnectionError) as exc:
        raise ConfigError(f"Postgres at DATABASE_URL does not answer: {exc}.") from exc


@contextlib.asynccontextmanager
async def connected(settings: Settings, pool_size: int = 2,
                    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> AsyncIterator[Stores]:
    """A pool and a Redis client on the configured stores, closed on the way out."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL must be set; `booking serve` sets it for you.")
    pool = await open_pool(settings, pool_size, statement_timeout_ms)
    redis = open_redis(settings.redis_url, cluster=settings.redis_cluster)
    try:
        yield Stores(pool, redis)
    finally:
        await close_redis(redis)
        await pool.close()


@contextlib.contextmanager
def running(settings: Settings, *, quiet: bool = False) -> Iterator[Settings]:
    """The given stores, or private embedded ones when DATABASE_URL / REDIS_URL are unset;
    yields settings naming both."""
    if settings.database_url and settings.redis_url:
        yield settings
        return
    from booking.core.embedded import EmbeddedStores

    if not quiet:
        print(f"Starting private Postgres and Redis under {settings.data_dir}/ ...", flush=True)
    with EmbeddedStores(settings.data_dir) as embedded:
        if not quiet:
            print(f"  DATABASE_URL={settings.database_url or embedded.database_url}")
            print(f"  REDIS_URL={settings.redis_url or embedded.redis_url}", flush=True)
        yield settings.with_urls(settings.database_url or embedded.database_url,
                                 settings.redis_url or embedded.redis_url)
