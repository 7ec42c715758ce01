"""What operators read: one JSON line per event, tied to the request, with no secrets in it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from conftest import FAIL_INSERTS, STOP_FAILING, address_of, make_course, resident, unique


def complete_lines(log: Path) -> list[str]:
    """The log's lines that have been written to the end (a line being written is left out)."""
    return log.read_text().split("\n")[:-1]


async def log_events(log: Path, request_id: str, timeout: float = 20.0) -> list[dict[str, object]]:
    """The service's log lines tagged with `request_id`, once one of them has been written."""
    deadline = time.monotonic() + timeout
    while True:
        events = [json.loads(line) for line in complete_lines(log) if line.startswith("{")]
        ours = [event for event in events if event.get("request_id") == request_id]
        if ours or time.monotonic() > deadline:
            return ours
        await asyncio.sleep(0.1)


async def failed_write(http: httpx.AsyncClient, db: asyncpg.Pool, who: str,
                       request_id: str) -> tuple[httpx.Response, dict[str, str]]:
    """A grab whose row Postgres refuses (logged as a warning); the answer and its headers."""
    course = await make_course(http, capacity=1)
    headers = {**resident(who), "X-Forwarded-For": address_of(who), "X-Request-Id": request_id}
    await db.execute(FAIL_INSERTS.format(course_id=int(course["id"])))
    try:
        answer = await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)
    finally:
        await db.execute(STOP_FAILING)
    return answer, headers


async def test_a_failed_write_is_logged_as_json_with_the_request_id_and_no_token(
        http, db, server_log):
    who = unique("logged")
    request_id = f"trace-{uuid.uuid4().hex}"
    answer, headers = await failed_write(http, db, who, request_id)

    assert answer.status_code == 503
    assert answer.headers["x-request-id"] == request_id
    events = await log_events(server_log, request_id)
    assert [e["level"] for e in events if "not committed" in str(e["msg"])] == ["warning"]
    log_text = server_log.read_text()
    assert headers["Authorization"].removeprefix("Bearer ") not in log_text
    assert "Bearer" not in log_text
    assert who not in log_text  # resident ids stay out of the log


async def test_after_the_start_banner_every_line_is_one_json_object(http, db, server_log):
    request_id = f"trace-{uuid.uuid4().hex}"
    await failed_write(http, db, unique("logged"), request_id)  # one event logged for sure
    assert await log_events(server_log, request_id), "the service logged nothing"

    lines = [line for line in complete_lines(server_log) if line.strip()]
    banner = next(i for i, line in enumerate(lines) if line.startswith("Serving on"))
    events = [json.loads(line) for line in lines[banner + 1:]]

    assert any(event["request_id"] == request_id for event in events)
    assert all({"ts", "level", "logger", "msg", "request_id"} <= event.keys() for event in events)
