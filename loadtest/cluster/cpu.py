"""CPU seconds of each part of the stack over a span (psutil), killed processes included.

A process killed mid-rush can no longer be asked for its CPU time, so the meter samples every
process of each group twice a second and keeps the last figure it saw of each: the span's CPU
of a group is the sum over its processes of (last seen - seen at the start; 0 for a process
born during the span).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable

import psutil

SAMPLE_EVERY_S = 0.5

# A group is a function giving the processes that belong to it now.
Members = Callable[[], Iterable[psutil.Process]]


def trees(pids: Callable[[], Iterable[int | None]]) -> Members:
    """The processes `pids()` names now, with all their descendants."""
    def members() -> list[psutil.Process]:
        found = []
        for pid in pids():
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                found += [root, *root.children(recursive=True)]
        return found
    return members


def postgres_backends(postmaster_pid: int, database: str | None) -> Members:
    """Postgres's processes: all of them (a private server), or only the backends serving
    `database` (a shared one, whose other users are not ours to count)."""
    def members() -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(postmaster_pid)
            children = root.children()
            if database is None:
                return [root, *children]
            return [p for p in children if _serves(p, database)]
        return []
    return members


def _serves(process: psutil.Process, database: str) -> bool:
    with contextlib.suppress(psutil.Error):
        return f" {database} " in " ".join(process.cmdline())
    return False


class CpuMeter:
    """`start()` before the span, `stop()` after it, then `seconds()` per group."""

    def __init__(self, groups: dict[str, Members]) -> None:
        self.groups = groups
        self._first: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._last: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample(first=False)

    def seconds(self) -> dict[str, float]:
        return {name: round(sum(last - self._first[name].get(pid, 0.0)
                                for pid, last in self._last[name].items()), 2)
                for name in self.groups}

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample(first=False)

    def _sample(self, *, first: bool) -> None:
        for name, members in self.groups.items():
            for process in members():
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    used = times.user + times.system
                    if first:
                        self._first[name][process.pid] = used
                    self._last[name][process.pid] = used

