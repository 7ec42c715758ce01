"""Lua scripts: read from the package, run one at a time or many in one pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[Sequence[str], Sequence[object]]  # keys, args
# The channel the scripts announce a changed course on (see memory.py), as written in them.
CHANGES = "booking:course-changed"


def changes_channel(redis: Redis) -> str:
    """The announcements' channel of this client's database. Pub/sub ignores the database a
    client selected, so deployments (or test runs) sharing a Redis server by database number
    would otherwise hear each other's course ids."""
    pool = getattr(redis, "connection_pool", None)
    db = pool.connection_kwargs.get("db", 0) if pool is not None else 0
    return f"{CHANGES}:{db}"


def with_channel(redis: Redis, text: str) -> str:
    """A script's text announcing on the channel of this client's database."""
    return text.replace(f"'{CHANGES}'", f"'{changes_channel(redis)}'")


def load_script(redis: Redis, package: str, name: str) -> AsyncScript:
    """A script registered with redis-py, which reloads it by itself after NOSCRIPT."""
    text = resources.files(package).joinpath(f"{name}.lua").read_text()
    return redis.register_script(with_channel(redis, text))


async def run_many(redis: Redis, script: AsyncScript, calls: list[Call]) -> list[object]:
    """Run the script once per call in one pipeline (each run still atomic on its own keys);
    a reply is the script's result or the error of that one run."""
    replies = await _pipeline(redis, script, calls)
    unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:  # Redis restarted or flushed its scripts: load again, run those again
        await redis.script_load(script.script)
        again = await _pipeline(redis, script, [calls[i] for i in unknown])
        for i, reply in zip(unknown, again, strict=True):
            replies[i] = reply
    return replies


async def _pipeline(redis: Redis, script: AsyncScript, calls: list[Call]) -> list[object]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)
