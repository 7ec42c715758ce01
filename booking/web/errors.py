"""Errors on a page are pages: a sentence in the visitor's language, never JSON or a trace."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException

from booking.core.errors import ApiError
from booking.web.render import page, visitor

log = logging.getLogger("booking.web")


def error_page(request: Request, exc: Exception) -> Response:
    """The answer of a page route that failed: its status and a human sentence."""
    _ = visitor(request).words.gettext
    if isinstance(exc, ApiError):
        status, code = exc.status_code, exc.code
    elif isinstance(exc, HTTPException):
        status, code = exc.status_code, "http_error"
    else:
        log.exception("page %s failed", request.url.path)
        status, code = 500, "internal"
    messages = {
        400: _("请求有误，请返回重试。"),
        403: _("页面已过期或来源不明，请返回刷新后再试。"),
        404: _("找不到这个页面。"),
        429: _("操作太频繁，请稍等片刻再试。"),
        503: _("系统繁忙，请稍后再试。"),
    }
    if isinstance(exc, NotAuthorizedException | PermissionDeniedException):
        status = 403
    message = messages.get(status, _("出了点问题，请稍后再试。"))
    return page(request, "error.html", status_code=status, title=_("出错了"), code=code,
                message=message, back="/")


EXCEPTION_HANDLERS = {ApiError: error_page, HTTPException: error_page, Exception: error_page}
