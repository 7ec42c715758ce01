"""Live seat counts: the SSE streams (`/courses/{id}/live`, `/live?courses=`), the JSON the
script polls instead (`/courses/{id}/seats`), coalescing, heartbeats, cleanup after a crowd of
opens and closes, and the 503 past the per-process cap.

Streams are read as they arrive by a task of their own; tests wait for a frame with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import OPERATOR, Stores, client_of, grab, make_course, running_service, unique
from redis.asyncio import Redis

from booking.live import MAX_COURSES, channel_name

SNAPSHOT_S = 2.0  # "at once", with room for a slow machine
CHANGE_S = 3.0  # the bar: a grab shows on a stream within 3 s
LIVE_GAUGES = ("booking_live_streams", "booking_live_subscribers",
               "booking_live_watched_courses")


@dataclass
class Frame:
    """One SSE frame: an event (`event`, `data`, maybe `retry`) or a comment."""

    at: float  # time.monotonic() when it arrived
    event: str | None = None
    data: Any = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def seats(self) -> dict[str, Any] | None:
        return self.data if self.event == "seats" else None


class Stream:
    """An open SSE response whose frames a task collects as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        lines: list[str] = []
        async for line in self.response.aiter_lines():
            if line:
                lines.append(line)
            elif lines:
                self.frames.append(_frame(lines))
                self._arrived.set()
                lines = []

    async def wait(self, wanted: Callable[[Frame], bool], timeout: float,
                   after: int = 0) -> Frame:
        """The first frame from index `after` on that is `wanted`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames[after:]:
                if wanted(frame):
                    return frame
            left = deadline - time.monotonic()
            assert left > 0, f"no such frame in {timeout} s; got {self.frames}"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def seat_events(self, course_id: int) -> list[Frame]:
        return [f for f in self.frames if f.seats and f.seats["course_id"] == course_id]

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._reader
        await self.response.aclose()


def _frame(lines: list[str]) -> Frame:
    frame = Frame(at=time.monotonic())
    for line in lines:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            frame.comments.append(value)
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data = json.loads(value)
        elif name == "retry":
            frame.retry = int(value)
    return frame


@contextlib.asynccontextmanager
async def stream(http: httpx.AsyncClient, path: str) -> AsyncIterator[Stream]:
    async with http.stream("GET", path) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        opened = Stream(response)
        try:
            yield opened
        finally:
            await opened.close()


def seats_of(course_id: int, seats_left: int | None = None) -> Callable[[Frame], bool]:
    def wanted(frame: Frame) -> bool:
        return (frame.seats is not None and frame.seats["course_id"] == course_id
                and (seats_left is None or frame.seats["seats_left"] == seats_left))
    return wanted


async def test_a_stream_sends_its_snapshot_at_once(http):
    course = await make_course(http, capacity=5)
    async with stream(http, f"/courses/{course['id']}/live") as live:
        first = await live.wait(lambda f: True, SNAPSHOT_S)

        headers = live.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in headers  # not compressed: events leave at once
        assert first.event == "seats" and first.retry == 3000
        assert first.data == {"course_id": course["id"], "seats_left": 5, "status": "open"}


async def test_an_api_grab_shows_on_the_stream_within_3_s(http):
    course = await make_course(http, capacity=5)
    async with stream(http, f"/courses/{course['id']}/live") as live:
        await live.wait(seats_of(course["id"], 5), SNAPSHOT_S)
        assert (await grab(http, course["id"], unique("live"))).status_code == 201
        grabbed = time.monotonic()

        shown = await live.wait(seats_of(course["id"], 4), CHANGE_S + 1)

        assert shown.at - grabbed <= CHANGE_S
        assert shown.data["status"] == "open"


async def test_15_changes_in_3_s_come_as_at_most_6_events_the_last_one_right(http):
    course = await make_course(http, capacity=30)
    async with stream(http, f"/courses/{course['id']}/live") as live:
        await live.wait(seats_of(course["id"], 30), SNAPSHOT_S)
        for _ in range(15):  # the load's shape: one grab every 0.2 s
            assert (await grab(http, course["id"], unique("coalesce"))).status_code == 201
            await asyncio.sleep(0.2)
        last_grab = time.monotonic()

        final = await live.wait(seats_of(course["id"], 15), CHANGE_S + 1)

        assert final.at - last_grab <= CHANGE_S
        changes = live.seat_events(course["id"])[1:]
        assert 1 <= len(changes) <= 6, [f.data for f in changes]
        left = [f.data["seats_left"] for f in changes]
        assert left == sorted(left, reverse=True) and len(set(left)) == len(left)
        gaps = [b.at - a.at for a, b in zip(live.seat_events(course["id"]), changes,
                                            strict=False)]
        assert min(gaps) >= 0.5, gaps  # at most one a second (a little room for the network)


async def test_a_quiet_stream_sends_a_comment_within_15_s(http):
    course = await make_course(http, capacity=5)
    async with stream(http, f"/courses/{course['id']}/live") as live:
        snapshot = await live.wait(seats_of(course["id"]), SNAPSHOT_S)

        comment = await live.wait(lambda f: bool(f.comments), 15.5)

        assert comment.at - snapshot.at <= 15
        assert comment.event is None and comment.data is None


async def test_seats_json_says_each_status_and_may_be_cached_a_second(http):
    open_course = await make_course(http, capacity=3)
    later = await make_course(http, capacity=4, opens_in_s=3600)
    full = await make_course(http, capacity=1)
    assert (await grab(http, full["id"], unique("full"))).status_code == 201
    cancelled = await make_course(http, capacity=2)
    answer = await http.patch(f"/v1/courses/{cancelled['id']}", json={"status": "cancelled"},
                              headers=OPERATOR)
    assert answer.status_code == 200, answer.text

    expected = {open_course["id"]: (3, "open"), later["id"]: (4, "not_open"),
                full["id"]: (0, "sold_out"), cancelled["id"]: (0, "cancelled")}
    for course_id, (seats_left, status) in expected.items():
        answer = await http.get(f"/courses/{course_id}/seats")
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "max-age=1"
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {"course_id": course_id, "seats_left": seats_left,
                                 "status": status}


async def test_unknown_courses_are_404_and_bad_lists_400(http):
    course = await make_course(http, capacity=1)
    for path in ("/courses/999999999/seats", "/courses/999999999/live", "/courses/0/live",
                 f"/live?courses={course['id']},999999999", "/courses/99999999999999999999/seats"):
        answer = await http.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["code"] == "not_found"
    too_many = ",".join(str(course["id"] + i) for i in range(MAX_COURSES + 1))
    for path in ("/live", "/live?courses=", "/live?courses=1,x", f"/live?courses={too_many}"):
        answer = await http.get(path)
        assert answer.status_code == 400, path
        assert answer.json()["code"] == "invalid"


async def test_one_stream_carries_several_courses(http):
    quiet = await make_course(http, capacity=3)
    busy = await make_course(http, capacity=4)
    async with stream(http, f"/live?courses={quiet['id']},{busy['id']}") as live:
        await live.wait(seats_of(busy["id"], 4), SNAPSHOT_S)
        first = [f.data for f in live.frames[:2]]
        assert first == [{"course_id": quiet["id"], "seats_left": 3, "status": "open"},
                         {"course_id": busy["id"], "seats_left": 4, "status": "open"}]
        assert live.frames[0].retry == 3000

        assert (await grab(http, busy["id"], unique("several"))).status_code == 201
        await live.wait(seats_of(busy["id"], 3), CHANGE_S + 1)

        assert len(live.seat_events(quiet["id"])) == 1  # nothing changed there: no event


def _gauges(metrics: str) -> dict[str, float]:
    return {name: float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))
            for name in LIVE_GAUGES}


async def test_1000_opens_and_closes_leave_no_subscriber_behind(stores: Stores, redis: Redis,
                                                                 tmp_path: Path):
    """On a service of its own (2 workers), so no other test's stream counts."""
    with running_service(stores, tmp_path / "server.log", BOOKING_WORKERS="2") as base_url:
        async with client_of(base_url, 100) as client:
            course = await make_course(client, capacity=5)
            channel = channel_name(redis.connection_pool.connection_kwargs.get("db", 0),
                                   course["id"])

            async def numsub() -> int:
                return dict(await redis.pubsub_numsub(channel))[channel]

            async def gauges() -> dict[str, float]:
                return _gauges((await client.get("/metrics")).text)

            async def open_and_close(n: int) -> None:
                async with client.stream("GET", f"/courses/{course['id']}/live") as response:
                    assert response.status_code == 200
                    if n % 2:  # half read the snapshot, half leave at once
                        async for line in response.aiter_lines():
                            if line.startswith("data:"):
                                break

            async with stream(client, f"/courses/{course['id']}/live") as witness:
                await witness.wait(seats_of(course["id"]), SNAPSHOT_S)
                await _until(numsub, lambda n: n >= 1)
                assert (await gauges())["booking_live_streams"] >= 1
                lanes = asyncio.Semaphore(50)

                async def lane(n: int) -> None:
                    async with lanes:
                        await open_and_close(n)

                await asyncio.gather(*(lane(n) for n in range(1000)))
                assert await numsub() >= 1  # the witness still listens

            await _until(numsub, lambda n: n == 0)
            await _until(gauges, lambda g: all(value == 0 for value in g.values()))


async def _until(read: Callable[[], Any], done: Callable[[Any], bool],
                 timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    value = await read()
    while not done(value):
        assert time.monotonic() < deadline, f"still {value} after {timeout} s"
        await asyncio.sleep(0.2)
        value = await read()


async def test_past_the_cap_a_stream_is_refused_with_503_and_seats_still_answer(
        stores: Stores, tmp_path: Path):
    cap = 2
    with running_service(stores, tmp_path / "server.log", BOOKING_WORKERS="1",
                         BOOKING_SSE_MAX_STREAMS=str(cap)) as base_url:
        async with client_of(base_url, 10) as client:
            course = await make_course(client, capacity=5)
            path = f"/courses/{course['id']}/live"
            async with contextlib.AsyncExitStack() as held:
                opened = [await held.enter_async_context(stream(client, path))
                          for _ in range(cap)]
                for live in opened:
                    await live.wait(seats_of(course["id"]), SNAPSHOT_S)

                refused = await client.get(path)

                assert refused.status_code == 503
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["code"] == "too_many_streams"
                seats = await client.get(f"/courses/{course['id']}/seats")
                assert seats.status_code == 200 and seats.json()["seats_left"] == 5
                await opened[0].close()

                async def status() -> int:
                    async with client.stream("GET", path) as response:
                        return response.status_code

                await _until(status, lambda code: code == 200)
