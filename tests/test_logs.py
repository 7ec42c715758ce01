"""What operators read: one JSON line per event, tied to the request, with no secrets in it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from conftest import FAIL_INSERTS, STOP_FAILING, address_of, make_course, resident, unique


async def log_events(log: Path, request_id: str) -> list[dict[str, object]]:
    """The service's log lines tagged with `request_id`, once they have been written."""
    for _ in range(50):
        events = [json.loads(line) for line in log.read_text().splitlines()
                  if line.startswith("{")]
        ours = [event for event in events if event.get("request_id") == request_id]
        if ours:
            return ours
        await asyncio.sleep(0.1)
    return []


async def test_a_failed_write_is_logged_as_json_with_the_request_id_and_no_token(
        http, db, server_log):
    course = await make_course(http, capacity=1)
    who = unique("logged")
    request_id = f"trace-{uuid.uuid4().hex}"
    headers = {**resident(who), "X-Forwarded-For": address_of(who), "X-Request-Id": request_id}
    await db.execute(FAIL_INSERTS.format(course_id=int(course["id"])))
    try:
        answer = await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)
    finally:
        await db.execute(STOP_FAILING)

    assert answer.status_code == 503
    assert answer.headers["x-request-id"] == request_id
    events = await log_events(server_log, request_id)
    assert [e["level"] for e in events if "not committed" in str(e["msg"])] == ["warning"]
    log_text = server_log.read_text()
    assert headers["Authorization"].removeprefix("Bearer ") not in log_text
    assert "Bearer" not in log_text
    assert who not in log_text  # resident ids stay out of the log


async def test_after_the_start_banner_every_line_is_one_json_object(http, server_log):
    await http.get("/v1/courses/999999999")  # at least one request served
    lines = [line for line in server_log.read_text().splitlines() if line.strip()]
    banner = next(i for i, line in enumerate(lines) if line.startswith("Serving on"))
    events = [json.loads(line) for line in lines[banner + 1:]]

    assert events, "the service logged nothing"
    assert all({"ts", "level", "logger", "msg", "request_id"} <= event.keys() for event in events)
