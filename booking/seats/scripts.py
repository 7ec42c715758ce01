"""Lua scripts: read from the package, run one at a time or many in one pipeline."""

from __future__ import annotations

import asyncio
import math
from importlib import resources

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from booking.core.redis_nodes import Call, nodes_of
from booking.core.stores import RedisClient

# The channel the scripts announce a changed course on (see memory.py), as written in them.
CHANGES = "booking:course-changed"


def changes_channel(redis: RedisClient) -> str:
    """The announcements' channel of this client's database. Pub/sub ignores the database a
    client selected, so deployments (or test runs) sharing a Redis server by database number
    would otherwise hear each other's course ids."""
    pool = getattr(redis, "connection_pool", None)
    db = pool.connection_kwargs.get("db", 0) if pool is not None else 0
    return f"{CHANGES}:{db}"


def with_channel(redis: RedisClient, text: str) -> str:
    """A script's text announcing on the channel of this client's database."""
    return text.replace(f"'{CHANGES}'", f"'{changes_channel(redis)}'")


def load_script(redis: RedisClient, package: str, name: str) -> AsyncScript:
    """A script registered with redis-py, which reloads it by itself after NOSCRIPT."""
    text = resources.files(package).joinpath(f"{name}.lua").read_text()
    return redis.register_script(with_channel(redis, text))


_CLUSTER_KINDS: dict[type, bool] = {}


def is_cluster(redis: RedisClient) -> bool:
    """isinstance(redis, RedisCluster), kept per client class: RedisCluster is a Protocol's
    subclass, which makes every isinstance check against it cost 1.5 us."""
    kind = type(redis)
    known = _CLUSTER_KINDS.get(kind)
    if known is None:
        known = _CLUSTER_KINDS[kind] = isinstance(redis, RedisCluster)
    return known


def server_of(redis: RedisClient, key: str) -> str:
    """Which server serves `key`: a cluster's node, as the client knows the slots now ("" on
    a single Redis, or before the client has learnt the slots)."""
    if not is_cluster(redis) or not redis.nodes_manager.slots_cache:  # type: ignore[union-attr]
        return ""
    return redis.nodes_manager.get_node_from_slot(redis.keyslot(key)).name


async def run_many(redis: RedisClient, script: AsyncScript, calls: list[Call]) -> list[object]:
    """Run the script once per call in one pipeline (each run still atomic on its own keys);
    a reply is the script's result or the error of that one run. On a cluster, one pipeline
    per node, side by side, through plain clients of their own (booking/core/redis_nodes.py): a
    node that fails (a dead primary before its replica takes over) fails only the calls on
    its own slots."""
    if is_cluster(redis):
        return await nodes_of(redis).run(  # type: ignore[arg-type]
            calls, lambda node, mine: _on_one_server(node, script, mine))
    return await _on_one_server(redis, script, calls)


async def _on_one_server(redis: Redis, script: AsyncScript,
                         calls: list[Call]) -> list[object]:
    replies = await _pipeline(redis, script, calls)
    unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:  # Redis restarted or flushed its scripts: load again, run those again
        await redis.script_load(script.script)
        again = await _pipeline(redis, script, [calls[i] for i in unknown])
        for i, reply in zip(unknown, again, strict=True):
            replies[i] = reply
    return replies


async def _pipeline(redis: Redis, script: AsyncScript, calls: list[Call]) -> list[object]:
    """One write of every call, then their replies, under one timeout for the lot. redis-py's
    own pipeline starts a timer per reply, which was a third of a rate-limit check's CPU
    (py-spy on a micro-benchmark of RateLimiter); this reads each reply with none and bounds the
    whole read by the client's socket timeout instead. A dropped connection is retried as
    redis-py's pipeline would, by the client's retry policy on a fresh connection."""
    packed = _packed(script.sha, calls)
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(lambda: _round_trip(conn, packed, len(calls)),
                                                lambda _: conn.disconnect())
    except (AttributeError, TypeError, RuntimeError) as exc:
        # redis-py 8.1 lets a write on a connection its server just closed (a node killed
        # mid-call) escape as these instead of ConnectionError (redis/redis-py#4287); on
        # uvloop as a RuntimeError ("... the handler is closed").
        if "NoneType" not in str(exc) and "handler is closed" not in str(exc):
            raise
        raise RedisConnectionError(f"the connection closed mid-call: {exc}") from exc
    finally:
        await pool.release(conn)


async def _round_trip(conn: AbstractConnection, packed: bytes, replies: int) -> list[object]:
    await conn.send_packed_command(packed, check_health=False)
    answers: list[object] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(replies):
                try:
                    answers.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:  # that call's error (e.g. NOSCRIPT), not the batch's
                    answers.append(exc)
    except TimeoutError as exc:  # read_response has dropped the connection: it is out of step
        raise RedisTimeoutError(f"no answer within {conn.socket_timeout} s") from exc
    return answers


def _packed(sha: str, calls: list[Call]) -> bytes:
    """`EVALSHA sha numkeys keys... args...` per call, in the protocol's own form (RESP arrays
    of bulk strings), built in one go."""
    parts: list[bytes] = []
    for keys, args in calls:
        words = [str(len(keys)), *keys, *args]
        parts.append(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (len(words) + 2,
                                                                       sha.encode()))
        for word in words:
            data = word.encode() if isinstance(word, str) else str(word).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
