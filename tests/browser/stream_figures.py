"""Figures, not a test: how fast live seats reach a real tab, and what 5,000 streams cost.

    .venv/bin/python -m tests.browser.stream_figures [--streams 5000] [--samples 20]

It starts its own `booking serve` with ONE worker (on DATABASE_URL/REDIS_URL, or on private
stores when those are unset), then:
1. delivery: a course page in headless chromium; the script takes a seat through the API, and
   the page notes (a MutationObserver on `#seats-left`) when the number changed; p50 / p95 of
   the delay over `--samples` grabs, each sent at a random moment after the previous change
   (the watcher reads counters once a second and a stream carries at most one event per
   course per second, so up to about two seconds is by design);
2. many streams: `--streams` plain sockets each open `/courses/{id}/live` and read its
   snapshot; the worker's RSS before and after, and its CPU per second while the streams
   stay open and quiet, then while every stream is sent a change a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

from booking.ops.service import Service

from .api import Api
from .tab import PHONE, chromium

NOTE_CHANGES = """
() => {
  window.seatChanges = [];
  const seats = document.querySelector('#seats-left');
  new MutationObserver(() => window.seatChanges.push([Date.now(), seats.textContent]))
    .observe(seats, {childList: true, characterData: true, subtree: true});
}
"""


def delivery(api: Api, samples: int) -> list[float]:
    """Milliseconds from a grab's answer to the tab's new number, per grab."""
    course = api.course(capacity=samples + 5)
    delays = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium())
        page = browser.new_context(**PHONE).new_page()
        page.goto(f"{api.base_url}/courses/{course['id']}")
        page.wait_for_function("() => document.querySelector('#seats-left') !== null")
        page.evaluate(NOTE_CHANGES)
        for n in range(samples):
            time.sleep(random.uniform(0, 1))  # a grab at any moment of the watcher's second
            api.grab(course["id"], api.resident())
            answered_ms = time.time() * 1000
            page.wait_for_function(f"() => window.seatChanges.length > {n}", timeout=30_000)
            changed_ms = page.evaluate(f"() => window.seatChanges[{n}][0]")
            delays.append(max(0.0, changed_ms - answered_ms))
        browser.close()
    return delays


async def open_streams(base_url: str, course_id: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` live streams, each having read its snapshot."""
    host, port = base_url.removeprefix("http://").split(":")
    request = (f"GET /courses/{course_id}/live HTTP/1.1\r\nHost: {host}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    opened: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await reader.readuntil(b"event: seats")
        opened.append(writer)
        asyncio.get_running_loop().create_task(_drain(reader))

    for start in range(0, count, 200):
        await asyncio.gather(*(one() for _ in range(min(200, count - start))))
    return opened


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def many_streams(api: Api, worker: psutil.Process, count: int) -> None:
    course = api.course(capacity=1000)
    rss_before = worker.memory_info().rss
    started = time.monotonic()
    writers = await open_streams(api.base_url, course["id"], count)
    print(f"{count:,} streams open in {time.monotonic() - started:.1f} s; worker RSS "
          f"{rss_before / 2**20:.0f} MiB -> {worker.memory_info().rss / 2**20:.0f} MiB "
          f"({(worker.memory_info().rss - rss_before) / count / 1024:.1f} KiB a stream)")
    for label, grabs_per_s in (("quiet", 0), ("a change a second", 1)):
        before, t0 = cpu_s(worker), time.monotonic()
        for _ in range(10):
            for _ in range(grabs_per_s):
                await asyncio.to_thread(api.grab, course["id"], api.resident())
            await asyncio.sleep(1)
        used = (cpu_s(worker) - before) / (time.monotonic() - t0)
        print(f"  {label:<18} worker CPU {used * 100:5.1f} % of a core")
    for writer in writers:
        writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the service inherits it
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="booking-streams-") as data_dir:
        env = {**os.environ, "BOOKING_SECRET": secret, "BOOKING_DATA_DIR": data_dir,
               "BOOKING_WORKERS": "1", "BOOKING_SSE_MAX_STREAMS": str(args.streams + 100)}
        with Service(env, Path(data_dir) / "service.log") as service:
            api = Api(service.base_url, secret)
            delays = sorted(delivery(api, args.samples))
            p95 = delays[min(len(delays) - 1, round(0.95 * (len(delays) - 1)))]
            print(f"delivery to a real tab over {len(delays)} grabs: p50 "
                  f"{statistics.median(delays):.0f} ms, p95 {p95:.0f} ms, max {delays[-1]:.0f} ms")
            worker = psutil.Process(service.pid)
            asyncio.run(many_streams(api, worker, args.streams))
            api.close()


if __name__ == "__main__":
    main()
