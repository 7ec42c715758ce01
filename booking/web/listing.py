"""(to be written) The course list at `/`."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Template

from booking.web.render import page


@get("/", name="home")
async def home(request: Request) -> Template:
    return page(request, "error.html", title="夜校抢座", code="", message="", back="/")


HANDLERS: list[Any] = [home]
