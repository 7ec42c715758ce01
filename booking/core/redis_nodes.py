"""The scripts of the seat path on a Redis Cluster, node by node, through plain clients.

redis-py's cluster client recovers from a dead node by closing the connections to *every*
node (`RedisCluster.aclose()` on ClusterDownError or a connection error), which cuts the
calls in flight to healthy nodes too: one dead primary would fail grabs of courses on the
others. So the hot path (grabs, rate limits, term-cap quotas: `run_many` in
booking/seats/scripts.py) sends its pipelines through a plain client per node of its own,
routed by the slot map the cluster client keeps. A node's failure then fails only the calls
on its slots; it makes the map be read again (one refresh at a time), and a call a node
answered MOVED (it did not run there) is sent once more to the node the fresh map names.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Call = tuple[Sequence[str], Sequence[object]]  # keys, args
RunOn = Callable[[Redis, list[Call]], Awaitable[list[object]]]
_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


class Nodes:
    """Plain clients of a cluster's primaries, and the routing of calls to them."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._clients: dict[str, Redis] = {}
        self._refresh: asyncio.Task[None] | None = None

    async def run(self, calls: list[Call], run_on: RunOn) -> list[object]:
        """`run_on(client, calls)` per node, side by side; one reply per call (a result, or
        the error of that call or of its node)."""
        # Learns the slots on its first call, and again after the cluster client saw a node
        # fail: a dead node may fail that reading, which must not fail calls to the others.
        with contextlib.suppress(RedisError, OSError):
            await self._cluster.initialize()
        replies = await self._run_grouped(calls, run_on)
        moved = [i for i, reply in enumerate(replies) if isinstance(reply, MovedError)]
        if any(isinstance(reply, _BROKEN) for reply in replies) or moved:
            await self.refresh()
        if moved:  # not run where it was sent: once more, where the slots are now
            again = await self._run_grouped([calls[i] for i in moved], run_on)
            for i, reply in zip(moved, again, strict=True):
                replies[i] = reply
        return replies

    async def refresh(self) -> None:
        """Read the slot map again; callers that ask meanwhile share the one reading."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._read_slots())
        await asyncio.shield(self._refresh)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def _run_grouped(self, calls: list[Call], run_on: RunOn) -> list[object]:
        groups: dict[str, list[int]] = {}
        for i, (keys, _) in enumerate(calls):
            node = self._cluster.nodes_manager.get_node_from_slot(self._cluster.keyslot(keys[0]))
            groups.setdefault(node.name, []).append(i)
        results = await asyncio.gather(
            *(run_on(self._client(name), [calls[i] for i in group])
              for name, group in groups.items()), return_exceptions=True)
        replies: list[object] = [None] * len(calls)
        for group, result in zip(groups.values(), results, strict=True):
            for j, i in enumerate(group):
                replies[i] = result if isinstance(result, BaseException) else result[j]
        return replies

    def _client(self, name: str) -> Redis:
        client = self._clients.get(name)
        if client is None:
            host, port = name.rsplit(":", 1)
            client = self._clients[name] = Redis(
                host=host, port=int(port), decode_responses=True, socket_timeout=5,
                socket_connect_timeout=2, max_connections=1024, retry=Retry(NoBackoff(), 0))
        return client

    async def _read_slots(self) -> None:
        with contextlib.suppress(RedisError):  # no node answered: the next failure asks again
            await self._cluster.nodes_manager.initialize()


_NODES: weakref.WeakKeyDictionary[RedisCluster, Nodes] = weakref.WeakKeyDictionary()


def nodes_of(cluster: RedisCluster) -> Nodes:
    """The plain clients of this cluster client (made on first use, one set per client)."""
    nodes = _NODES.get(cluster)
    if nodes is None:
        nodes = _NODES[cluster] = Nodes(cluster)
    return nodes


async def close_nodes(cluster: RedisCluster) -> None:
    nodes = _NODES.pop(cluster, None)
    if nodes is not None:
        await nodes.aclose()
