"""Every page's first load fits in 30 KB on the wire (HTML, CSS, script, images and response
headers, as compressed), and every request goes to our own origin. A page reached by a form (a
result page) is measured from the submit, with the cache off: its CSS and script count again."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .api import Api
from .pages import PAGES
from .tab import Tab

BUDGET_BYTES = 30 * 1024


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("name", list(PAGES))
def test_a_first_load_fits_in_30_kb(name: str, lang: str, api: Api,
                                    open_tab: Callable[..., Tab]) -> None:
    visit = PAGES[name](api)
    tab = open_tab(lang=lang, resident_token=api.token(visit.resident) if visit.resident
                   else None)
    if visit.then is not None:
        tab.page.goto(tab.base_url + visit.path)  # the page holding the form, not measured
    received: dict[str, int] = {}
    cdp = tab.context.new_cdp_session(tab.page)
    cdp.on("Network.loadingFinished",
           lambda event: received.__setitem__(event["requestId"],
                                              int(event["encodedDataLength"])))
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    if visit.then is None:
        tab.page.goto(tab.base_url + visit.path)
    else:
        visit.then(tab.page)
    tab.page.wait_for_load_state("load")
    assert tab.documents[-1].status == visit.status
    assert received, "no response was measured"
    assert sum(received.values()) <= BUDGET_BYTES, (
        f"{name} ({lang}): {sum(received.values()):,} bytes in {len(received)} responses")
    assert tab.problems() == []
