"""uvicorn workers, each listening on a socket of its own on the one port (SO_REUSEPORT).

uvicorn's own supervisor binds one listening socket and hands it to every worker; each worker
takes connections from it when it wakes, so a burst of new connections can land on one worker
and stay there. On 2 cores with wrk (256 connections, 5 s runs) the bare stack served that way
had a p99 of 158 and 400 ms in two runs of five, with stalls up to 0.95 s, while the same app with a
socket per worker kept p99 between 40 and 60 ms in thirteen runs out of thirteen. With a socket
per worker the kernel spreads connections over the workers by their address hash.

So `serve` runs a small supervisor of its own when there are several workers: it starts them,
starts another when one dies (the worker fault rehearsal relies on that), stops them all on
SIGINT or SIGTERM, and stops the service when a worker cannot start at all (a broken app or
port would fail the same way every time), as uvicorn's does. One worker is uvicorn.run as before.
It does not ping its workers: a worker that hangs without dying is not replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from booking.core.settings import ConfigError

log = logging.getLogger("booking.ops.workers")

# uvicorn's options for every worker of `booking serve`, and of the bench's bare stack
# (booking/ops/ceiling.py). Live-seat streams never end by themselves, hence the bounded
# graceful shutdown.
SERVER_OPTIONS: dict[str, Any] = {
    "access_log": False, "log_level": "warning", "log_config": None, "loop": "uvloop",
    "http": "httptools", "backlog": 4096, "timeout_graceful_shutdown": 5}
STOP_GRACE_S = 15  # a worker's own graceful shutdown is shorter (timeout_graceful_shutdown)
CHECK_EVERY_S = 0.5


class CannotListen(ConfigError):
    """The port is taken (or the address is not this machine's)."""


def serve(app: str, *, host: str, port: int, workers: int, **options: Any) -> int:
    """Serve the app factory `app` on host:port with `workers` processes; uvicorn `options`
    apply to each. Returns the exit code: 0 once stopped by a signal, STARTUP_FAILURE when a
    worker could not start."""
    _check_free(host, port)
    if workers == 1:
        uvicorn.run(app, factory=True, host=host, port=port, **options)
        return 0
    config = uvicorn.Config(app, factory=True, host=host, port=port, **options)
    return Supervisor(config, workers).run()


def _check_free(host: str, port: int) -> None:
    """A port in use is told in one sentence, before any worker starts. (Workers would not
    always find out themselves: they share the port with any socket of this user that also asks
    to share it.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _worker(config: uvicorn.Config) -> None:
    """One worker process: its own listening socket, then uvicorn's server on it."""
    config.configure_logging()
    try:
        sock = _listening_socket(config.host, config.port, config.backlog)
    except OSError as exc:
        log.error("worker cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # the app's startup failed; it has said why
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    def __init__(self, config: uvicorn.Config, workers: int) -> None:
        self._config = config
        self._spawn = multiprocessing.get_context("spawn")
        self._count = workers
        self._workers: list[SpawnProcess] = []
        self._stop = threading.Event()

    def _start(self) -> SpawnProcess:
        process = self._spawn.Process(target=_worker, args=(self._config,), daemon=False)
        process.start()
        return process

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        self._workers = [self._start() for _ in range(self._count)]
        code = 0
        while not self._stop.wait(CHECK_EVERY_S):
            code = self._replace_dead()
            if code:
                break
        self._stop_all()
        return code

    def _replace_dead(self) -> int:
        """Start another worker in place of each one that died; STARTUP_FAILURE (and nothing
        started) when one could not start at all."""
        for i, process in enumerate(self._workers):
            if process.is_alive():
                continue
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker %s could not start; stopping the service", process.pid)
                return STARTUP_FAILURE
            if self._stop.is_set():
                return 0
            log.warning("worker %s died (exit code %s); starting another", process.pid,
                        process.exitcode)
            self._workers[i] = self._start()
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every worker still running (each finishes its requests and its app's
        shutdown), then SIGKILL to any that has not exited after STOP_GRACE_S."""
        for process in self._workers:
            if process.is_alive():
                process.terminate()
        for process in self._workers:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
