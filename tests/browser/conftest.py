"""Browser tests: pytest-playwright driving Debian's `chromium` (no `playwright install`).

How sync Playwright lives beside pytest-asyncio's session loop
-------------------------------------------------------------
The suite runs its async fixtures and tests on one session-scoped event loop, which
pytest-asyncio drives with `Runner.run()` between tests (so no loop is running while a sync
test runs, and sync Playwright may start). But sync Playwright marks its own loop as the
thread's running loop between its calls, for as long as it is started: any async test or
fixture set up while it is alive fails with "Runner.run() cannot be called from a running
event loop". pytest-playwright starts it once per session, so the async tests collected after
this folder would all fail.

Hence:
- Playwright, the browser type and the browser are PACKAGE-scoped here (they override
  pytest-playwright's session fixtures of the same names): they stop when the last test of
  `tests/browser/` is done, before the async tests of other folders run.
- Every browser test is a SYNC test that requests only sync fixtures. The session fixtures they
  need (`server`, which stands on the async `db` and `redis`) are session-scoped, so pytest
  sets them up before these package-scoped ones, while no Playwright loop runs. A browser test
  must not request an async fixture (`http`, `db`, `redis`, ...): it sets data up with the sync
  `api` fixture (tests/browser/api.py) instead.

pytest-playwright's own `page`, `context` and `new_context` still work here, as a phone
(`browser_context_args`); `@pytest.mark.browser_context_args(java_script_enabled=False)` turns
JavaScript off for one test. `open_tab(js=False, ...)` gives a phone tab that also guards the
network and notes dialogs, pop-ups and script errors (tests/browser/tab.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET
from playwright.sync_api import Browser, BrowserType, Playwright, sync_playwright

from .api import Api, tag
from .axe import axe_script
from .tab import PHONE, Tab, chromium

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored screenshots


INSTALL = Path(__file__).resolve().parents[1] / "install-debian.sh"


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """Debian's chromium (with fonts-noto-cjk); installed first with apt-get, as .ci/run
    does, when missing (the script returns at once when both are there)."""
    installed = subprocess.run(["bash", str(INSTALL), "chromium", "fonts-noto-cjk"],
                               capture_output=True, text=True)
    if installed.returncode != 0:
        pytest.fail(f"the browser tests need Debian's chromium and fonts-noto-cjk, and "
                    f"{INSTALL.name} could not install them: {installed.stderr.strip()}")
    try:
        return chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="package")
def browser_type(playwright: Playwright) -> BrowserType:
    return playwright.chromium


@pytest.fixture(scope="package")
def launch_browser(browser_type_launch_args: dict[str, Any],
                   browser_type: BrowserType) -> Callable[..., Browser]:
    def launch(**options: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **options})
    return launch


@pytest.fixture(scope="package")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="package")
def browser_context_args() -> dict[str, Any]:
    return dict(PHONE)


@pytest.fixture(scope="package")
def api(server: str) -> Iterator[Api]:
    client = Api(server, SECRET)
    yield client
    client.close()


@pytest.fixture(scope="session")
def axe() -> Path:
    """axe-core's `axe.min.js`, from its npm package, cached outside the repo."""
    return axe_script()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def open_tab(browser: Browser, browser_context_args: dict[str, Any],
             server: str) -> Iterator[Callable[..., Tab]]:
    """`open_tab(lang="zh", js=True, width=None, resident_token=None)`: a new phone (its own
    browser context and client address) with the language chosen (the switch's cookie), maybe
    signed in (the sign-in cookie), JavaScript on or off, and `width` CSS px wide (360 unless
    given). Closed after the test."""
    contexts = []

    def open_one(*, lang: str = "zh", js: bool = True, width: int | None = None,
                 resident_token: str | None = None) -> Tab:
        options = dict(browser_context_args, java_script_enabled=js,
                       extra_http_headers={"X-Forwarded-For": f"10.200.{_octets()}"})
        if width is not None:
            options["viewport"] = options["screen"] = {"width": width, "height": 740}
        context = browser.new_context(**options)
        contexts.append(context)
        tab = Tab(context, server)
        tab.choose(lang)
        if resident_token is not None:
            tab.sign_in(resident_token)
        return tab

    yield open_one
    for context in contexts:
        context.close()


def _octets() -> str:
    """Two octets of a client address of a tab's own (per-address limits are per phone)."""
    n = int(tag(), 16)
    return f"{n >> 8 & 255}.{n & 255}"
