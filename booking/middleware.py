"""Plain ASGI middleware (no per-request objects): the request id."""

from __future__ import annotations

import re
import uuid

from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = b"x-request-id"
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def request_id(app: ASGIApp) -> ASGIApp:
    """Echo the client's X-Request-Id (or a new one) on the response.

    A load generator uses it to match answers to the residents that asked; logs will use it to
    follow one request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                rid = value
                break
        if rid is None or not _SAFE_ID.fullmatch(rid):
            rid = uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID, rid)]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware
