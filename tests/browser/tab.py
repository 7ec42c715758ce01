"""A browser tab on a resident's phone that notes what a page must never do.

Every request to another origin is aborted and noted (the pages reach no network: no CDN, no
web font, no analytics); so are dialogs (`alert`/`confirm`, dismissed), pop-up windows, script
errors and failed requests of the page's own files. `problems()` lists them for the assertion.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from playwright.sync_api import BrowserContext, Dialog, Page, Request, Response, Route

from booking.web.render import LANG_COOKIE, TOKEN_COOKIE

from .pages import Visit

# A phone of the people the pages are for: small screen, Chinese, touch, high density.
PHONE: dict[str, Any] = {
    "viewport": {"width": 360, "height": 740}, "screen": {"width": 360, "height": 740},
    "locale": "zh-CN", "timezone_id": "Asia/Shanghai", "has_touch": True, "is_mobile": True,
    "device_scale_factor": 2}
TIMEOUT_MS = 15_000
# Headless Debian chromium that phones home to nobody.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def chromium() -> dict[str, Any]:
    """Launch options for Debian's `chromium` (never a browser of Playwright's own)."""
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("Debian's chromium is missing: apt-get install chromium "
                           "fonts-noto-cjk (.ci/run does it)")
    return {"executable_path": executable, "headless": True, "args": CHROMIUM_ARGS}


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def with_query(url: str, **params: str) -> str:
    """`url` with some query parameters set."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Tab:
    """One page in its own browser context, watched from its creation."""

    context: BrowserContext
    base_url: str
    page: Page = field(init=False)
    offsite: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    popups: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)  # main-frame navigations

    def __post_init__(self) -> None:
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route("**/*", self._guard)
        self.context.on("dialog", self._dialog)
        self.page = self.context.new_page()
        self.context.on("page", lambda popup: self.popups.append(popup.url or "about:blank"))
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        self.page.on("response", self._response)

    def _guard(self, route: Route, request: Request) -> None:
        if origin(request.url) == origin(self.base_url):
            route.fallback()
        else:
            self.offsite.append(request.url)
            route.abort("blockedbyclient")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _response(self, response: Response) -> None:
        request = response.request
        if request.is_navigation_request() and request.frame == self.page.main_frame:
            self.documents.append(response)
        elif response.status >= 400:
            self.failed_files.append(f"{response.status} {request.url}")

    def sign_in(self, resident_token: str) -> None:
        self._cookie(TOKEN_COOKIE, resident_token)

    def choose(self, lang: str) -> None:
        """The language, as the switch leaves it (a cookie)."""
        self._cookie(LANG_COOKIE, lang)

    def _cookie(self, name: str, value: str) -> None:
        self.context.add_cookies([{"name": name, "value": value, "url": self.base_url,
                                   "httpOnly": True, "sameSite": "Lax"}])

    def visit(self, visit: Visit, size: str | None = None) -> int:
        """Go to `visit.path` (with `?size=` if given, as the size links do), do its action,
        and return the HTTP status of the page it ends on."""
        url = self.base_url + visit.path
        self.page.goto(with_query(url, size=size) if size else url)
        if visit.then is not None:
            visit.then(self.page)
        return self.documents[-1].status if self.documents else 0

    def problems(self) -> list[str]:
        found = []
        for title, items in (("requests to another origin (aborted)", self.offsite),
                             ("dialogs opened", self.dialogs), ("pop-up windows", self.popups),
                             ("script errors", self.script_errors),
                             ("own files that failed", self.failed_files)):
            if items:
                found.append(f"{title}:\n    " + "\n    ".join(dict.fromkeys(items)))
        return found

