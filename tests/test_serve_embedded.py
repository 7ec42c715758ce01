"""The README's first command on a fresh machine: `booking serve --demo` with no stores named, so
on embedded Postgres and Redis of its own, answered, then stopped with Ctrl-C.

Ctrl-C in a terminal signals the whole foreground process group. The embedded Redis must not
hear it: it has to outlive the workers' shutdown (they still talk to it while they stop), and
`booking serve` stops it once they are gone.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

START_S = 180  # a first start runs initdb and builds the demo term


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fresh_env() -> dict[str, str]:
    """The environment of someone who just cloned the repo: no stores, no BOOKING_* settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("BOOKING_")}


class Console:
    """The service's console, read line by line in a thread so that waiting has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [*map(self._queue.put, stdout), self._queue.put(None)],
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"the console closed before {text!r}:\n{''.join(self.lines)}"
            self.lines.append(line)

    def rest(self, timeout: float) -> str:
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def _redis_answers(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            client.connect(str(sock))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_the_demo_on_embedded_stores_answers_and_stops_quietly_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "booking", "serve", "--demo", "--crowd", "0", "--port", str(port)],
        cwd=tmp_path, env=_fresh_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)  # a group of its own, as a terminal's foreground job
    console = Console(proc)
    try:
        console.wait_for("Ctrl-C stops.", START_S)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the workers start after the line above
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "".join(console.lines)
            time.sleep(0.1)
        course = httpx.get(f"{base}/v1/courses/1", timeout=5)
        assert course.status_code == 200 and course.json()["id"] == 1

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: every process of the group hears it
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    output = console.rest(10)
    noisy = [line for line in output.splitlines()
             if '"level":"warning"' in line or '"level":"error"' in line or "Traceback" in line]
    assert noisy == [], output
    assert not _redis_answers(tmp_path / ".booking" / "redis" / "redis.sock")
    assert not (tmp_path / ".booking" / "postgres" / "postmaster.pid").exists()
