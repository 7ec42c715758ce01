"""`python -m loadtest.capacity.gcprobe`: measure a worker's full garbage collections.

Where calibrate.GC_EVERY_ANSWERS and GC_PAUSE_ANSWERS come from. It starts private stores and
one `booking serve` worker whose interpreter logs every full (generation 2) collection (a
`sitecustomize` on its PYTHONPATH adds a gc callback), publishes 400 courses of one seat, and
keeps 128 connections of grabs on it (sold out within a second, as the bench's long tail is)
for `--seconds`. Over a window that skips the first 3 s it prints the answers per full
collection, a collection's CPU against the worker's mean answer, and the client's latencies
with and without a collection in flight. One process on one core: lighter than a bench, but
still run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from booking.core.auth import mint
from booking.core.embedded import EmbeddedStores
from booking.ops.rehearsal import publish_release
from booking.ops.service import Service

SECRET = "gcprobe-secret-that-is-long-enough-for-hs256"
CONNECTIONS = 128  # one bench worker's share of wrk's 256
SKIP_S = 3.0  # the sell-out and the first collections are left out of the window
HOOK = """import gc, os, time
_log = os.environ["GCPROBE_LOG"]
_began = {}
def _probe(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _began[0] = (time.monotonic(), time.process_time())
        return
    wall, cpu = _began.pop(0, (time.monotonic(), time.process_time()))
    with open(_log, "a") as out:
        out.write(f"{time.monotonic()} {time.monotonic() - wall} {time.process_time() - cpu}\\n")
if os.environ.get("GCPROBE_LOG"):
    gc.callbacks.append(_probe)
"""


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when it was read
    latency: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    seconds = max(SKIP_S + 4, parser.parse_args().seconds)
    with tempfile.TemporaryDirectory(prefix="gcprobe-") as name:
        work = Path(name)
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(HOOK)
        answers, window, cpu = _probe(work, seconds)
        pauses = _pauses(work / "gc.log")
    print("\n".join(report(answers, pauses, window, cpu)))


def _probe(work: Path, seconds: float) -> tuple[list[Answer], tuple[float, float], float]:
    with EmbeddedStores(work / "stores") as stores:
        env = {**os.environ, "DATABASE_URL": stores.database_url,
               "REDIS_URL": stores.redis_url, "BOOKING_SECRET": SECRET, "BOOKING_WORKERS": "1",
               "BOOKING_DATA_DIR": str(work / "data"), "PYTHONPATH": str(work / "hook"),
               "GCPROBE_LOG": str(work / "gc.log")}
        with Service(env, work / "server.log") as service:
            release = asyncio.run(publish_release(service.base_url, SECRET, courses=400,
                                                  seats=1, opens_in_s=2))
            tokens = [mint(SECRET, "resident", f"probe-{n}") for n in range(30_000)]
            time.sleep(max(0.0, release.opens_at_epoch - time.time()) + 0.2)
            meter = _CpuWindow(psutil.Process(service.pid), seconds)
            meter.start()
            answers = asyncio.run(_rush(service.port, tokens, release.course_ids, seconds))
            meter.join()
    return answers, meter.window, meter.cpu


class _CpuWindow(threading.Thread):
    """The worker's CPU seconds over [start + SKIP_S, end - 1 s] of the rush."""

    def __init__(self, process: psutil.Process, seconds: float) -> None:
        super().__init__()
        self.process, self.seconds = process, seconds
        self.window, self.cpu = (0.0, 0.0), 0.0

    def run(self) -> None:
        time.sleep(SKIP_S)
        began, before = time.monotonic(), self._cpu()
        time.sleep(self.seconds - SKIP_S - 1)
        self.window, self.cpu = (began, time.monotonic()), self._cpu() - before

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


async def _rush(port: int, tokens: list[str], courses: list[int],
                seconds: float) -> list[Answer]:
    answers: list[Answer] = []
    stop = time.monotonic() + seconds

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = index
        while time.monotonic() < stop:
            n += CONNECTIONS
            sent = time.monotonic()
            writer.write(_grab(tokens[n % len(tokens)], courses[n * 7919 % len(courses)], n))
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            now = time.monotonic()
            answers.append(Answer(now, now - sent))
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return answers


def _grab(token: str, course: int, n: int) -> bytes:
    """A resident's grab as bench_rush.lua sends it (an address of its own)."""
    return (f"POST /v1/courses/{course}/bookings HTTP/1.1\r\nHost: probe\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"X-Forwarded-For: 10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _pauses(log: Path) -> list[tuple[float, float, float]]:
    """Each full collection: (began, ended, CPU seconds), on time.monotonic()."""
    if not log.exists():
        return []
    rows = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    return [(end - wall, end, cpu) for end, wall, cpu in rows]


def report(answers: list[Answer], pauses: list[tuple[float, float, float]],
           window: tuple[float, float], cpu: float) -> list[str]:
    began, ended = window
    inside = [a for a in answers if began <= a.at < ended]
    full = [p for p in pauses if began <= p[1] < ended]
    if not inside or not full:
        return ["no full collection in the window: run longer (--seconds)"]
    mean = cpu / len(inside)
    pause = sum(p[2] for p in full) / len(full)
    paused = [any(b < a.at and e > a.at - a.latency for b, e, _ in full) for a in inside]
    hit = [a.latency for a, p in zip(inside, paused, strict=True) if p]
    missed = [a.latency for a, p in zip(inside, paused, strict=True) if not p]
    return [
        f"window {ended - began:.1f} s: {len(inside)} answers, worker CPU {cpu:.2f} s "
        f"({mean * 1000:.4f} ms per answer)",
        f"full collections: {len(full)}, one every {_between(inside, full):.0f} answers, "
        f"{pause * 1000:.1f} ms of CPU each = {pause / mean:.0f} mean answers' CPU "
        f"({sum(p[2] for p in full) / cpu:.1%} of the worker's CPU)",
        f"latency of answers with a collection in flight: {_spread(hit)}",
        f"latency of the others: {_spread(missed)}",
    ]


def _between(answers: list[Answer], full: list[tuple[float, float, float]]) -> float:
    """Answers per collection, counted from the first collection to the last (the window's
    edges would count a part of a cycle as a whole one)."""
    if len(full) < 2:
        return float(len(answers))
    first, last = full[0][1], full[-1][1]
    return sum(1 for a in answers if first <= a.at < last) / (len(full) - 1)


def _spread(latencies: list[float]) -> str:
    if not latencies:
        return "none"
    ordered = sorted(latencies)
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    return f"{len(ordered)} answers, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


if __name__ == "__main__":
    main()
