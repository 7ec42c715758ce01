"""Plain ASGI middleware (no per-request objects): request id and request metrics."""

from __future__ import annotations

import re
import time
import uuid

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from booking.core.observability import REQUEST_SECONDS, child, request_id_var

REQUEST_ID = b"x-request-id"
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def observe(app: ASGIApp) -> ASGIApp:
    """Echo the client's X-Request-Id (or a new one) on the response, keep it for the logs,
    and time the request by its route template (`/v1/courses/{course_id}`, never a raw path).

    A load generator uses the echoed id to match answers to the residents that asked."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                rid = value
                break
        if rid is None or not _SAFE_ID.fullmatch(rid):
            rid = uuid.uuid4().hex.encode()
        request_id_var.set(rid.decode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID, rid)]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template", "unmatched")
            child(REQUEST_SECONDS, scope["method"], route, str(status)).observe(
                time.perf_counter() - started)

    return middleware
