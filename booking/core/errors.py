"""Every error leaves the service as JSON `{code, detail}`; this module says how, in one place."""

from __future__ import annotations

import logging
import math
from typing import Any

import asyncpg
import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from redis.exceptions import RedisError

from booking.core.fields import NO_NUL
from booking.core.observability import STORE_ERRORS

log = logging.getLogger("booking")


class ApiError(Exception):
    """A domain answer that is not a success: status, machine-readable code, human sentence.

    Subclasses name the common answers (`NotFound`, `Conflict`, ...); one handler table below
    turns any of them into `{code, detail}` JSON."""

    status_code = 400
    code = "invalid"
    detail = "The request is not valid."

    def __init__(self, detail: str | None = None, *, code: str | None = None,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.detail = detail or type(self).detail
        self.code = code or type(self).code
        super().__init__(self.detail)
        self.headers = headers or {}
        self.extra = extra or {}

    def again(self) -> ApiError:
        """A fresh copy of a shared error, to raise (a raised instance keeps its traceback)."""
        return type(self)(self.detail, code=self.code, headers=dict(self.headers),
                          extra=dict(self.extra))


class Invalid(ApiError):
    status_code, code = 400, "invalid"


class Unprocessable(ApiError):
    """A 422: well-formed, but it names something the request may not (`code` says what)."""

    status_code, code = 422, "unprocessable"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"
    detail = "Send a token as 'Authorization: Bearer <token>'."


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"
    detail = "This token may not do that."


class NotFound(ApiError):
    status_code, code = 404, "not_found"
    detail = "No such resource."

    @classmethod
    def of(cls, what: str) -> NotFound:
        return cls(f"No {what} with that id.")


class Conflict(ApiError):
    """A 409: the request is fine, the state of things says no (`code` says which)."""

    status_code, code = 409, "conflict"


class RateLimited(ApiError):
    status_code, code = 429, "rate_limited"
    detail = "Too many requests; please wait a moment."

    @classmethod
    def waiting(cls, wait_s: float, detail: str | None = None) -> RateLimited:
        return cls(detail, headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


class Unavailable(ApiError):
    status_code, code = 503, "unavailable"
    detail = "The service is briefly unavailable; please try again."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", "1")


class ErrorBody(msgspec.Struct):
    """The shape of every error answer (some add fields, e.g. `opens_at` on not_open)."""

    code: str
    detail: str


_MEANINGS = {
    400: "invalid: malformed JSON, wrong types, values out of range, unknown fields",
    401: "unauthorized: no token, or a token that is not valid",
    403: "forbidden: the token's role or venue may not do this",
    404: "not_found: no such course, venue or booking",
    409: "a domain answer: sold_out, not_open, course_cancelled, capacity_below_bookings",
    413: "body_too_large",
    422: "well-formed, but naming what it may not: unknown_course, duplicate_wish, bad_times",
    429: "rate_limited: too many grabs from this resident or address; see Retry-After",
    503: "unavailable: a store did not answer; safe to retry",
}


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers an operation can give."""
    return {status: ResponseSpec(ErrorBody, description=_MEANINGS[status])
            for status in statuses}


def error_body(error: ApiError) -> bytes:
    """An error's JSON body: `{code, detail}` and its extra fields."""
    return msgspec.json.encode({"code": error.code, "detail": error.detail, **error.extra})


def answer(error: ApiError) -> Response[Any]:
    """An error as a response, for hot paths that answer without raising (raising and
    catching through the framework costs more than the rest of a sold-out answer)."""
    return Response(error_body(error), status_code=error.status_code, headers=error.headers,
                    media_type=MediaType.JSON)


_CODES_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _json(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
          extra: dict[str, Any] | None = None) -> Response[dict[str, Any]]:
    body = {"code": code, "detail": detail, **(extra or {})}
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def _api_error(_: Request, exc: ApiError) -> Response[dict[str, Any]]:
    return _json(exc.status_code, exc.code, exc.detail, exc.headers, exc.extra)


def _validation_error(_: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    messages = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            where = f" ({item['key']})" if item.get("key") else ""
            message = str(item.get("message", "invalid value"))
            message = message.replace(f"matching regex '{NO_NUL}'", "without NUL characters")
            messages.append(f"{message}{where}")
    detail = "; ".join(messages) or f"The request could not be read: {exc.detail}"
    if not detail.endswith("."):
        detail += "."
    return _json(400, "invalid", detail)


def _http_error(_: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        log.error("http error %s: %s", status, exc.detail)
        return _json(status, "internal", "Something went wrong on our side.")
    code = _CODES_BY_STATUS.get(status, "error")
    detail = str(exc.detail)
    if status == 404:
        detail = "No such resource."
    elif status == 413:
        detail = "The request body is too large."
    return _json(status, code, detail, exc.headers)


def _bad_text(_: Request, exc: Exception) -> Response[dict[str, Any]]:
    return _json(400, "invalid", "Text may not contain NUL characters.")


def _store_down(_: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
    STORE_ERRORS.labels("redis" if isinstance(exc, RedisError) else "postgres").inc()
    error = Unavailable()
    return _json(error.status_code, error.code, error.detail, error.headers)


def _unexpected(_: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unexpected error", exc_info=exc)
    return _json(500, "internal", "Something went wrong on our side.")


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    ApiError: _api_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    asyncpg.CharacterNotInRepertoireError: _bad_text,
    RedisError: _store_down,
    asyncpg.PostgresError: _store_down,
    asyncpg.InterfaceError: _store_down,
    asyncpg.InternalClientError: _store_down,  # e.g. a connection dropped mid-protocol
    OSError: _store_down,
    TimeoutError: _store_down,
    Exception: _unexpected,
}


def error_response(exc: Exception) -> Response[Any]:
    """The answer the handler table gives `exc`, for a path that answers outside Litestar's
    router (the grab's fast path): the same status, body and headers as a routed request."""
    handler = next(EXCEPTION_HANDLERS[kind] for kind in type(exc).__mro__
                   if kind in EXCEPTION_HANDLERS)  # Exception is in the table
    return handler(None, exc)  # type: ignore[no-any-return]
