"""Figures, not a test: each page's bytes on the wire and load time on a slow phone.

    .venv/bin/python -m tests.browser.figures [--url http://127.0.0.1:8000 --secret ...]

A phone (360x740, Chinese) on a bad mobile link: 400 kbit/s both ways, 400 ms round trip, and
a CPU four times slower (Chrome DevTools' `Network.emulateNetworkConditions` and
`Emulation.setCPUThrottlingRate`). Each page is loaded in a fresh browser context (empty cache,
no connection open), so its bytes are a first load: HTML, CSS, script, images and headers, as
compressed on the wire. A page reached by a form (a result page) is measured from the submit,
after an unthrottled visit to the page that holds the form (its CSS and script are cached by
then, as they would be).

Without `--url` it starts its own `booking serve` (one worker, demo payments) on
DATABASE_URL/REDIS_URL, or on private stores when those are unset; with `--url` it sets up data
through that service's API, with tokens signed by `--secret` (default: $BOOKING_SECRET).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from booking.ops.service import Service
from booking.web.render import LANG_COOKIE, TOKEN_COOKIE

from .api import Api
from .pages import PAGES, Visit
from .tab import PHONE, chromium

KBIT_S = 400
RTT_MS = 400
CPU_SLOWDOWN = 4
BUDGET_BYTES = 30 * 1024  # the bar for a page's first load


@dataclass(frozen=True)
class Figure:
    status: int
    wire_bytes: int
    requests: int
    load_s: float
    after: str  # the page whose form led here ("" for a first load)


def throttled(browser: Browser, lang: str, visit: Visit, api: Api) -> Figure:
    """One page in a fresh context, measured under the slow link and CPU."""
    context = browser.new_context(**PHONE)
    try:
        context.add_cookies([{"name": LANG_COOKIE, "value": lang, "url": api.base_url}])
        if visit.resident:
            context.add_cookies([{"name": TOKEN_COOKIE, "value": api.token(visit.resident),
                                  "url": api.base_url, "httpOnly": True}])
        context.set_default_timeout(120_000)
        page = context.new_page()
        statuses: list[int] = []  # of the main frame's documents
        page.on("response", lambda response: statuses.append(response.status) if (
            response.request.is_navigation_request()
            and response.frame == page.main_frame) else None)
        url = api.base_url + visit.path
        if visit.then is not None:
            page.goto(url)  # the page holding the form, unmeasured
        cdp = context.new_cdp_session(page)
        received: dict[str, int] = {}
        cdp.on("Network.loadingFinished",
               lambda event: received.__setitem__(event["requestId"],
                                                  int(event["encodedDataLength"])))
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": RTT_MS, "downloadThroughput": KBIT_S * 1000 / 8,
            "uploadThroughput": KBIT_S * 1000 / 8})
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
        started = time.monotonic()
        if visit.then is None:
            page.goto(url, wait_until="load")
        else:
            visit.then(page)  # submits and waits for the load of the page it leads to
        load_s = time.monotonic() - started
        return Figure(statuses[-1] if statuses else 0, sum(received.values()), len(received),
                      load_s, visit.path if visit.then is not None else "")
    finally:
        context.close()


@contextlib.contextmanager
def service(url: str | None, secret: str | None) -> Iterator[Api]:
    """An API client of the service at `url`, or of one started here for the occasion."""
    if url:
        if not secret:
            sys.exit("--secret (or BOOKING_SECRET) is needed to set up data on --url")
        api = Api(url.rstrip("/"), secret)
        try:
            yield api
        finally:
            api.close()
        return
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="booking-figures-") as data_dir:
        env = {**os.environ, "BOOKING_SECRET": secret, "BOOKING_DATA_DIR": data_dir,
               "BOOKING_WORKERS": "1", "BOOKING_DEMO": "1", "BOOKING_LOGIN_CODES": "log"}
        with Service(env, Path(data_dir) / "service.log") as started:
            api = Api(started.base_url, secret)
            try:
                yield api
            finally:
                api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start one)")
    parser.add_argument("--secret", default=os.environ.get("BOOKING_SECRET"),
                        help="its BOOKING_SECRET, to sign the tokens that set up data")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh")
    parser.add_argument("--pages", default=",".join(PAGES),
                        help=f"comma-separated, of: {', '.join(PAGES)}")
    args = parser.parse_args(argv)
    names = [name for name in args.pages.split(",") if name]
    unknown = [name for name in names if name not in PAGES]
    if unknown:
        parser.error(f"no such page: {', '.join(unknown)}")

    print(f"{KBIT_S} kbit/s, {RTT_MS} ms RTT, CPU {CPU_SLOWDOWN}x slower; phone 360x740, "
          f"{args.lang}; fresh cache per page")
    print(f"{'page':<18}{'status':>7}{'bytes':>10}{'requests':>10}{'load s':>9}  note")
    with service(args.url, args.secret) as api, sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium())
        try:
            for name in names:
                figure = throttled(browser, args.lang, PAGES[name](api), api)
                note = f"after {figure.after}" if figure.after else (
                    "over 30 KB" if figure.wire_bytes > BUDGET_BYTES else "")
                print(f"{name:<18}{figure.status:>7}{figure.wire_bytes:>10,}"
                      f"{figure.requests:>10}{figure.load_s:>9.2f}  {note}", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
