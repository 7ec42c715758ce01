"""A browser without JavaScript, for page tests over plain HTTP: it keeps cookies (the sign-in
and the CSRF cookie), reads a page's forms with their hidden fields (`_csrf_token`), sends them
as a browser would, and does not follow redirects, so each 303 can be looked at."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from typing import Any

import httpx

from booking.web.render import TOKEN_COOKIE


class Forms(HTMLParser):
    """The forms of a page by id: action, method and their hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, Any]] = {}
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        seen = dict(attrs)
        if tag == "form":
            self._open = {"action": seen.get("action"), "method": seen.get("method"),
                          "fields": {}}
            self.forms[seen.get("id") or f"form-{len(self.forms)}"] = self._open
        elif tag == "input" and self._open is not None and seen.get("type") == "hidden":
            self._open["fields"][seen.get("name")] = seen.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def forms_of(html: str) -> dict[str, dict[str, Any]]:
    parser = Forms()
    parser.feed(html)
    return parser.forms


@asynccontextmanager
async def page_client(server: str, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in with `token` in the sign-in cookie (None: signed out)."""
    cookies = {TOKEN_COOKIE: token} if token else {}
    async with httpx.AsyncClient(base_url=server, cookies=cookies, timeout=30) as client:
        yield client


async def submit(client: httpx.AsyncClient, page: str, form_id: str,
                 **fields: str) -> httpx.Response:
    """Load `page`, then send its form `form_id` as a browser would (its hidden fields too)."""
    shown = await client.get(page)
    assert shown.status_code == 200, shown.text
    form = forms_of(shown.text)[form_id]
    assert form["method"] == "post"
    return await client.post(form["action"], data={**form["fields"], **fields})
