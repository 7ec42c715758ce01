"""Lua scripts: read from the package, run one at a time or many in one pipeline."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

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


def server_of(redis: RedisClient, key: str) -> str:
    """Which server serves `key`: a cluster's node, as the client knows the slots now ("" on
    a single Redis, or before the client has learnt the slots)."""
    if not isinstance(redis, RedisCluster) or not redis.nodes_manager.slots_cache:
        return ""
    return redis.nodes_manager.get_node_from_slot(redis.keyslot(key)).name


async def run_many(redis: RedisClient, script: AsyncScript, calls: list[Call]) -> list[object]:
    """Run the script once per call in one pipeline (each run still atomic on its own keys);
    a reply is the script's result or the error of that one run. On a cluster, one pipeline
    per node, side by side, through plain clients of their own (booking/core/redis_nodes.py): a
    node that fails (a dead primary before its replica takes over) fails only the calls on
    its own slots."""
    if isinstance(redis, RedisCluster):
        return await nodes_of(redis).run(
            calls, lambda node, mine: _on_one_server(node, script, mine))
    return await _on_one_server(redis, script, calls)


async def _on_one_server(redis: RedisClient, script: AsyncScript,
                         calls: list[Call]) -> list[object]:
    replies = await _pipeline(redis, script, calls)
    unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:  # Redis restarted or flushed its scripts: load again, run those again
        await redis.script_load(script.script)
        again = await _pipeline(redis, script, [calls[i] for i in unknown])
        for i, reply in zip(unknown, again, strict=True):
            replies[i] = reply
    return replies


async def _pipeline(redis: RedisClient, script: AsyncScript, calls: list[Call]) -> list[object]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            return await pipe.execute(raise_on_error=False)
        except (AttributeError, TypeError, RuntimeError) as exc:
            # redis-py 8.1 lets a write on a connection its server just closed (a node killed
            # mid-call) escape as these instead of ConnectionError (redis/redis-py#4287); on
            # uvloop as a RuntimeError ("... the handler is closed").
            if "NoneType" not in str(exc) and "handler is closed" not in str(exc):
                raise
            raise RedisConnectionError(f"the connection closed mid-call: {exc}") from exc
