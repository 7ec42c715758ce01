"""`python -m booking serve` as a child process: started, waited for, watched and stopped.

The tests, the fault lab (`loadtest/faults/`) and `booking bench` all run the service exactly as
an operator would, on stores they name in its environment. This is the one place that starts it,
waits for `/ready` (with a deadline, and the end of its log when it dies or never gets ready),
knows its worker processes and stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import psutil

LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """The service did not start; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One `booking serve` with `env` (which names its stores and secret), listening on `port`
    (a free one by default) of 127.0.0.1 and appending its output to `log_path`."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**env, "BOOKING_PORT": str(self.port)}
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The serving process (uvicorn's supervisor when there are several workers)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 60) -> None:
        """Start it and return once `/ready` answers 200 and every worker runs."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_start = self.log_size()
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "booking", "serve"],
                                          env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        try:
            self._wait(self._ready, deadline, "/ready to answer 200", log_start)
            workers = self._expected_workers()  # one worker: uvicorn runs no supervisor
            if workers > 1:
                self._wait(lambda: len(self.worker_pids()) >= workers, deadline,
                           f"{workers} workers", log_start)
        except BaseException:
            self.stop()
            raise

    def _wait(self, done: Callable[[], bool], deadline: float, what: str,
              log_start: int) -> None:
        assert self._proc is not None
        while not done():
            code = self._proc.poll()
            if code is not None:
                raise ServiceError(f"the service exited with code {code} before {what}; "
                                   f"{self._tail(log_start)}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the service did not get {what} in time; "
                                   f"{self._tail(log_start)}")
            time.sleep(0.2)

    def _expected_workers(self) -> int:
        try:
            return int(self.env.get("BOOKING_WORKERS") or os.cpu_count() or 1)
        except ValueError:
            return 1  # the service itself refuses the value, and says so in its log

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _tail(self, offset: int) -> str:
        lines = self.log_since(offset)[-LOG_TAIL_LINES:]
        return f"the end of {self.log_path}:\n" + "\n".join(lines)

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes: the supervisor's children, minus multiprocessing helpers.
        Empty with one worker (it serves in the supervisor's place)."""
        if self._proc is None:
            return []
        try:
            children = psutil.Process(self._proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and not any(
                        "resource_tracker" in part for part in child.cmdline()):
                    pids.append(child.pid)
        return sorted(pids)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> list[str]:
        """The service's log lines written after `offset` (a `log_size()` taken earlier)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").splitlines()

    def stop(self, grace_s: float = 15) -> None:
        """SIGTERM (the service stops its workers and any stores it started), then SIGKILL to
        it and its workers if it has not exited within `grace_s`."""
        if self._proc is None:
            return
        workers = self.worker_pids()
        self._proc.terminate()
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
            for pid in workers:  # the supervisor died without stopping them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._proc = None
