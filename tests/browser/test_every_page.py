"""Every page, in Chinese and English (and in Chinese without JavaScript), on a phone: text
>= 18 px, `.primary` >= 60x60, targets >= 44x44, the language and its switch, no Chinese on an
English page outside data, axe-core WCAG 2.2 A/AA; then at `?size=xlarge` on a 320 px wide
phone: body text >= 28 px and no horizontal scroll. No page may open a dialog or a pop-up, throw
a script error or reach another origin. Each visit leaves a full-page screenshot in
`tests/artifacts/<page>-<lang>.png` (and `...-xlarge.png`).

The pages are listed in pages.py; all failures of one page are reported together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError

from . import rules
from .api import DATA_WORDS, Api
from .pages import PAGES, Visit
from .tab import Tab

VARIANTS = [pytest.param("zh", True, id="zh"), pytest.param("en", True, id="en"),
            pytest.param("zh", False, id="zh-nojs")]


def tab_for(open_tab: Callable[..., Tab], api: Api, visit: Visit, **options: object) -> Tab:
    """A phone for `visit`: signed in as its resident, if it has one."""
    token = api.token(visit.resident) if visit.resident else None
    return open_tab(resident_token=token, **options)


def reach(tab: Tab, visit: Visit, size: str | None = None) -> list[str]:
    """Open the page; a problem if it cannot be reached or answers another status."""
    try:
        status = tab.visit(visit, size)
    except PlaywrightError as exc:
        return [f"could not reach the page from {visit.path}: {exc.message.splitlines()[0]}"]
    if status != visit.status:
        return [f"{tab.page.url} answered {status}, expected {visit.status}"]
    return []


def phone_rules(tab: Tab, lang: str, js: bool, axe: Path) -> list[str]:
    page = tab.page
    problems = [*rules.viewport(page), *rules.language(page, lang), *rules.small_text(page),
                *rules.small_primary(page), *rules.small_targets(page)]
    if lang == "en":
        problems += rules.chinese_in_english(page, DATA_WORDS)
    if js:  # axe-core runs on timers, which a JavaScript-off page never fires
        problems += rules.axe_violations(page, axe)
    return problems


def xlarge_rules(tab: Tab) -> list[str]:
    page = tab.page
    return [*rules.small_body(page), *rules.wide_at(page, rules.NARROW_PX),
            *rules.small_text(page), *rules.small_primary(page), *rules.small_targets(page)]


@pytest.mark.parametrize(("lang", "js"), VARIANTS)
@pytest.mark.parametrize("name", list(PAGES))
def test_page_keeps_the_senior_rules(name: str, lang: str, js: bool, api: Api,
                                     open_tab: Callable[..., Tab], axe: Path,
                                     artifacts: Path) -> None:
    label = f"{name}-{lang}" + ("" if js else "-nojs")
    problems: list[str] = []

    visit = PAGES[name](api)
    tab = tab_for(open_tab, api, visit, lang=lang, js=js)
    reached = reach(tab, visit)
    problems += reached
    if not reached:
        tab.page.screenshot(path=artifacts / f"{label}.png", full_page=True)
        problems += phone_rules(tab, lang, js, axe)

    visit = PAGES[name](api)  # fresh data: the page as a new visitor at the largest text
    narrow = tab_for(open_tab, api, visit, lang=lang, js=js, width=rules.NARROW_PX)
    reached = reach(narrow, visit, size="xlarge")
    problems += [f"at ?size=xlarge: {problem}" for problem in reached]
    if not reached:
        narrow.page.screenshot(path=artifacts / f"{label}-xlarge.png", full_page=True)
        problems += [f"at ?size=xlarge, {rules.NARROW_PX} px wide: {problem}"
                     for problem in xlarge_rules(narrow)]

    problems += tab.problems() + narrow.problems()
    assert not problems, f"{label}:\n" + "\n".join(problems)
