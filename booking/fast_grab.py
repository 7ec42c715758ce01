"""The grab, answered before Litestar routes it.

On release night almost every request is a grab, and almost every grab is a "no" the process
answers from memory (seats/memory.py) plus one rate-limit round trip. What is left of its cost
is the way to a handler: on 2 cores, wrk against a Litestar POST with no I/O got 10.4-12.2k
req/s, against the same answer sent by a plain ASGI callable 21-28k, and a Litestar middleware
that answered before the handler saved nothing. So a canonical grab is answered here, in front
of Litestar's router, by the same domain call as Litestar's handler (`Bookings.grab_limited`)
and through the same error table (`error_response`).

Only a request that is plainly a resident's grab takes this way: `POST /v1/courses/<id>/bookings`
with the id in digits without a leading zero, a plain Host header and a valid resident token.
Everything else goes to Litestar untouched (before anything is counted or asked), so a stranger
is still told 401 and a venue 403 by the authentication middleware, and an odd form of the path
(`/v1/courses/007/bookings`) gets Litestar's answer, which the tests hold to be the same.
"""

from __future__ import annotations

import re

import msgspec
from litestar.datastructures import State
from litestar.types import Scope, Send

from booking.bookings import Bookings
from booking.core.auth import Principal, TokenVerifier
from booking.core.errors import ApiError, error_body, error_response

PREFIX, SUFFIX = "/v1/courses/", "/bookings"
MAX_DIGITS = 18  # a longer id is no course either way: Litestar's handler says so
# Litestar refuses some Host headers (400); anything beyond these characters is left to it.
_PLAIN_HOST = re.compile(rb"[0-9A-Za-z.:\-\[\]]*")
JSON = (b"content-type", b"application/json")


def course_of(scope: Scope) -> int | None:
    """The course of a canonical grab request, or None: not one (Litestar answers it)."""
    path: str = scope["path"]
    if scope["method"] != "POST" or not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    digits = path[len(PREFIX):-len(SUFFIX)]
    if not (0 < len(digits) <= MAX_DIGITS and digits.isascii() and digits.isdigit()) \
            or digits[0] == "0" or scope.get("root_path"):
        return None
    return int(digits)


class FastGrab:
    """Answers canonical grabs of residents; `answer` says whether it did."""

    def __init__(self, verifier: TokenVerifier, state: State, route_template: str) -> None:
        self._verifier = verifier
        self._state = state  # the app's: `bookings` is there once the lifespan has begun
        self._template = route_template  # what the request metrics label the route with

    async def answer(self, scope: Scope, send: Send) -> bool:
        course_id = course_of(scope)
        if course_id is None:
            return False
        bookings: Bookings | None = self._state.get("bookings")
        principal = self._resident(scope)
        if bookings is None or principal is None:
            return False
        scope["path_template"] = self._template
        client = scope.get("client")
        try:
            result = await bookings.grab_limited(course_id, principal,
                                                 client[0] if client else "-")
        except Exception as exc:  # the handler table's answer, as Litestar would give it
            response = error_response(exc)
            await _send(send, response.status_code, msgspec.json.encode(response.content),
                        response.headers)
            return True
        if isinstance(result, ApiError):
            await _send(send, result.status_code, error_body(result), result.headers)
        else:
            await _send(send, 201 if result.new else 200, msgspec.json.encode(result.booking))
        return True

    def _resident(self, scope: Scope) -> Principal | None:
        """The resident whose valid token the request carries; None: anything else."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host" and not _PLAIN_HOST.fullmatch(value):
                return None
        try:
            principal = self._verifier.principal(authorization)
        except ApiError:
            return None
        return principal if principal.role == "resident" else None


async def _send(send: Send, status: int, body: bytes,
                headers: dict[str, str] | None = None) -> None:
    raw = [JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
