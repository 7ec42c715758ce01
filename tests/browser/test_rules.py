"""The checks themselves: each one finds what it is for on a page made to break it, and passes
a page that keeps it (a check that cannot fail would let every page through)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page

from . import rules
from .tab import Tab

GOOD = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body {{ font-size: 20px; margin: 0 8px }} a, button {{ display: inline-block;
min-width: 44px; min-height: 44px; font: inherit }}
.primary {{ min-width: 60px; min-height: 60px }}</style>
</head><body><main><h1>{title}</h1>{body}</main></body></html>"""


def page_of(tab: Tab, body: str, lang: str = "zh-CN", title: str = "夜校抢座") -> Tab:
    tab.page.set_content(GOOD.format(lang=lang, title=title, body=body))
    return tab


def test_a_page_that_keeps_the_rules_passes(open_tab: Callable[..., Tab], axe: Path) -> None:
    tab = page_of(open_tab(), '<p>剩余座位：3</p><a href="/" hreflang="en" lang="en">English</a>'
                              '<button class="primary">立即抢座</button>')
    page = tab.page
    assert rules.small_text(page) == []
    assert rules.small_targets(page) == []
    assert rules.small_primary(page) == []
    assert rules.language(page, "zh") == []
    assert rules.viewport(page) == []
    assert rules.axe_violations(page, axe) == []
    assert tab.problems() == []


def test_small_text_and_targets_are_named_with_their_size(
        open_tab: Callable[..., Tab]) -> None:
    page = page_of(open_tab(), '<p style="font-size: 16px">时间均为北京时间</p>'
                               '<a href="/" style="display: inline; font-size: 18px">返回</a>'
                               '<button class="primary" style="min-height: 0">抢</button>').page
    [text] = rules.small_text(page)
    assert "p 16px «时间均为北京时间»" in text
    [targets] = rules.small_targets(page)
    assert "«返回»" in targets and "«抢»" in targets
    [primary] = rules.small_primary(page)
    assert "button.primary" in primary


def test_a_wrong_language_and_a_missing_switch_are_found(open_tab: Callable[..., Tab]) -> None:
    page = page_of(open_tab(), "<p>Seats left: 3</p>", lang="en").page
    problems = rules.language(page, "zh")
    assert '<html lang="en">, expected "zh-CN"' in problems[0]
    assert 'a[hreflang="en"]' in problems[1]


def test_chinese_on_an_english_page_is_allowed_only_as_data(
        open_tab: Callable[..., Tab]) -> None:
    page = page_of(open_tab(), '<p>Grab <b>立即抢座</b></p><p>Teacher: 李老师</p>'
                               '<p translate="no">王府井书店</p>'
                               '<a href="/" hreflang="zh-CN" lang="zh-CN">中文</a>'
                               '<img alt="签到二维码" src="data:,">',
                   lang="en", title="书法入门 · 抢座").page
    [found] = rules.chinese_in_english(page, data=["李老师", "书法入门"])
    assert "«立即抢座»" in found and "img[alt] «签到二维码»" in found
    assert "<title> «书法入门 · 抢座»" in found
    assert "李老师" not in found.replace("<title>", "") and "王府井" not in found
    assert "中文" not in found


def test_sideways_scroll_names_what_sticks_out(open_tab: Callable[..., Tab]) -> None:
    page = page_of(open_tab(width=rules.NARROW_PX),
                   '<p>短</p><table><tr><td style="white-space: nowrap">'
                   "一行很长很长很长很长很长很长很长很长的文字</td></tr></table>").page
    [wide] = rules.wide_at(page, rules.NARROW_PX)
    assert "scrollWidth" in wide and "td" in wide
    assert rules.small_body(page, 28) == ["body text 20px at ?size=xlarge, under 28"]


def test_axe_finds_missing_alt_text_and_low_contrast(open_tab: Callable[..., Tab],
                                                     axe: Path) -> None:
    page = page_of(open_tab(), '<img src="data:,"><p style="color: #bbb">已满</p>').page
    [found] = rules.axe_violations(page, axe)
    assert "image-alt" in found and "color-contrast" in found


def test_a_viewport_that_stops_zooming_is_found(open_tab: Callable[..., Tab]) -> None:
    page = open_tab().page
    page.set_content('<html lang="zh-CN"><head><meta name="viewport" '
                     'content="width=device-width, user-scalable=no"></head><body></body></html>')
    assert rules.viewport(page) == ['meta viewport "width=device-width, user-scalable=no" '
                                    "stops zooming"]


def test_the_tab_notes_dialogs_popups_errors_and_other_origins(
        open_tab: Callable[..., Tab]) -> None:
    tab = open_tab()
    offsite = "http://127.0.0.2:9/font.woff2"  # another origin, on this machine all the same
    with tab.page.expect_popup():  # the image is refused before the load event, so by then
        page_of(tab, f'<img src="{offsite}" alt="">'
                     "<script>alert('确定吗？'); window.open('about:blank'); "
                     "undefined_function();</script>")
    problems = "\n".join(tab.problems())
    assert offsite in problems
    assert "alert: 确定吗？" in problems
    assert "pop-up windows" in problems
    assert "undefined_function" in problems


SCRIPTED = "<p id=said>plain</p><script>said.textContent = 'scripted'</script>"


def test_pytest_playwrights_page_is_a_phone(page: Page) -> None:
    page.set_content(SCRIPTED)
    assert page.evaluate("[screen.width, navigator.maxTouchPoints > 0, devicePixelRatio]") == [
        360, True, 2]
    assert page.text_content("#said") == "scripted"


@pytest.mark.browser_context_args(java_script_enabled=False)
def test_the_marker_turns_javascript_off(page: Page) -> None:
    page.set_content(SCRIPTED)
    assert page.text_content("#said") == "plain"
