"""The pages' rules for older residents, as checks on a loaded page.

MIIT's 适老化通用设计规范 (2021), stricter than WCAG 2.2 AA: text >= 18 CSS px, the one big
button (`.primary`) >= 60x60, every other target >= 44x44, at the largest text size (root 30 px)
no horizontal scroll at 320 CSS px; and axe-core's WCAG 2.2 A/AA rules. Each check returns its
failures as sentences naming the element, the measured value and the text, so a failed test
says what to fix ("text under 18 px: footer.bottom > p 16px «时间均为北京时间»"); an empty list
is a pass.

English pages hold no Chinese but data. The check takes out the data words the test itself
created (tests/browser/api.py `DATA_WORDS`) and then finds no CJK character in any text node,
spoken attribute (alt, title, aria-label, placeholder, ...) or the `<title>`, except inside an
element marked `translate="no"` (names, titles, addresses: data no translator should touch) or
inside an element whose `lang` is not English (`<a hreflang="zh-CN" lang="zh-CN">中文</a>`).
So data that a test did not create (the demo's, another test's) must be marked to pass.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

MIN_TEXT_PX = 18
MIN_TARGET_PX = 44
PRIMARY_PX = 60
XLARGE_BODY_PX = 28
NARROW_PX = 320
TARGETS = ("a[href], button, input:not([type=hidden]), select, textarea, summary, "
           "[role=button], [role=link]")
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
HTML_LANG = {"zh": "zh-CN", "en": "en"}
OTHER_LANG = {"zh": "en", "en": "zh-CN"}  # the hreflang of the language switch
CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
TOLERANCE_PX = 0.01  # layout rounding; 43.99 is 44
SHOWN_AT_MOST = 12  # failures listed per check

# Shared by the scripts below: a short CSS path, whether an element is rendered, a text excerpt.
HELPERS = r"""
const describe = (el) => {
  const parts = [];
  for (let n = el, i = 0; n && n.nodeType === 1 && n !== document.body && i < 3;
       n = n.parentElement, i++) {
    let step = n.localName;
    if (n.id) step += '#' + n.id;
    else if (n.classList.length) step += '.' + [...n.classList].join('.');
    parts.unshift(step);
  }
  return parts.join(' > ') || el.localName;
};
const shown = (el) => el.checkVisibility({visibilityProperty: true});
const excerpt = (text) => {
  text = (text || '').replace(/\s+/g, ' ').trim();
  return text.length > 40 ? text.slice(0, 39) + '…' : text;
};
const px = (el) => parseFloat(getComputedStyle(el).fontSize);
const rendered = (node) => {
  const range = document.createRange();
  range.selectNodeContents(node);
  return [...range.getClientRects()].some((r) => r.width > 0 && r.height > 0);
};
"""


def _script(body: str) -> str:
    """A function for `page.evaluate` taking one argument `arg`, with the helpers in scope."""
    return "(arg) => {" + HELPERS + body + "}"


SMALL_TEXT = _script(r"""
const found = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const el = node.parentElement;
  if (!node.data.trim() || !el || !shown(el) || !rendered(node)) continue;
  if (px(el) < arg) found.push({where: describe(el), px: px(el), text: excerpt(node.data)});
}
for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (shown(el) && px(el) < arg) {
    found.push({where: describe(el), px: px(el), text: excerpt(el.value || el.placeholder)});
  }
}
return found;
""")

SMALL_BOXES = _script(r"""
const found = [];
for (const el of document.querySelectorAll(arg.selector)) {
  if (!shown(el)) continue;
  const box = el.getBoundingClientRect();
  if (box.width === 0 && box.height === 0) continue;  // no box of its own (display: contents)
  if (box.width + arg.tolerance < arg.width || box.height + arg.tolerance < arg.height) {
    found.push({where: describe(el), width: box.width, height: box.height,
                text: excerpt(el.textContent || el.value || el.getAttribute('aria-label'))});
  }
}
return found;
""")

LANGUAGE = _script(r"""
return {lang: document.documentElement.getAttribute('lang'),
        links: [...document.querySelectorAll('a[href][hreflang]')]
                 .filter(shown).map((a) => a.getAttribute('hreflang'))};
""")

CHINESE = _script(r"""
const cjk = new RegExp(arg.cjk);
const foreign = (text) => cjk.test(arg.data.reduce((left, word) => left.split(word).join(''),
                                                   text));
const allowed = (el) => {
  if (el.closest('[translate="no"]')) return true;
  const marked = el.closest('[lang]');
  return !!marked && !/^en(-|$)/i.test(marked.getAttribute('lang'));
};
const found = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const el = node.parentElement;
  if (!el || el.closest('script, style, template') || !foreign(node.data) || allowed(el)) {
    continue;
  }
  found.push({where: describe(el), text: excerpt(node.data)});
}
const spoken = ['alt', 'title', 'aria-label', 'aria-description', 'aria-roledescription',
                'aria-valuetext', 'placeholder', 'label'];
for (const el of document.body.querySelectorAll('*')) {
  const names = el.matches('input[type=submit], input[type=button], input[type=reset]')
    ? [...spoken, 'value'] : spoken;
  for (const name of names) {
    const value = el.getAttribute(name);
    if (value && foreign(value) && !allowed(el)) {
      found.push({where: describe(el) + '[' + name + ']', text: excerpt(value)});
    }
  }
}
return found;
""")

WIDE = _script(r"""
const root = document.documentElement;
const over = [...document.body.querySelectorAll('*')]
  .filter((el) => shown(el) && el.getBoundingClientRect().right > arg + 0.5);
const innermost = over.filter((el) => !over.some((other) => other !== el && el.contains(other)));
return {scrollWidth: root.scrollWidth,
        wide: innermost.slice(0, 8).map((el) => ({
          where: describe(el), right: el.getBoundingClientRect().right,
          text: excerpt(el.textContent)}))};
""")

VIEWPORT = """() => {
  const meta = document.querySelector('meta[name=viewport]');
  return meta ? meta.getAttribute('content') : null;
}"""

AXE_RUN = "(options) => axe.run(document, options)"


def _listed(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    more = len(lines) - SHOWN_AT_MOST
    shown = lines[:SHOWN_AT_MOST] + ([f"... and {more} more"] if more > 0 else [])
    return [f"{title}:\n    " + "\n    ".join(shown)]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def small_text(page: Page, min_px: float = MIN_TEXT_PX) -> list[str]:
    """Every rendered text node, and every form field, is at least `min_px` (computed)."""
    found = page.evaluate(SMALL_TEXT, min_px)
    return _listed(f"text under {min_px:g} px", _unique(
        f"{item['where']} {item['px']:g}px «{item['text']}»" for item in found))


def small_targets(page: Page, selector: str = TARGETS, min_px: float = MIN_TARGET_PX,
                  what: str = "targets") -> list[str]:
    """Every rendered element matching `selector` is at least `min_px` wide and high."""
    found = page.evaluate(SMALL_BOXES, {"selector": selector, "width": min_px, "height": min_px,
                                        "tolerance": TOLERANCE_PX})
    return _listed(f"{what} under {min_px:g}x{min_px:g} px", _unique(
        f"{item['where']} {item['width']:.1f}x{item['height']:.1f} «{item['text']}»"
        for item in found))


def small_primary(page: Page) -> list[str]:
    """The big button (`.primary`) is at least 60x60."""
    return small_targets(page, ".primary", PRIMARY_PX, what=".primary buttons")


def language(page: Page, lang: str) -> list[str]:
    """`<html lang>` names the page's language, and a visible link offers the other one."""
    found = page.evaluate(LANGUAGE)
    problems = []
    if found["lang"] != HTML_LANG[lang]:
        problems.append(f'<html lang="{found["lang"]}">, expected "{HTML_LANG[lang]}"')
    if OTHER_LANG[lang] not in found["links"]:
        problems.append(f'no visible a[hreflang="{OTHER_LANG[lang]}"] (language switch); '
                        f"hreflang links: {found['links']}")
    return problems


def chinese_in_english(page: Page, data: Iterable[str] = ()) -> list[str]:
    """An English page shows no Chinese outside data (see the module's docstring)."""
    words = sorted(data, key=len, reverse=True)  # 朝阳区文化馆 before 朝阳区
    found = page.evaluate(CHINESE, {"cjk": CJK.pattern, "data": words})
    lines = [f"{item['where']} «{item['text']}»" for item in found]
    title = page.title()
    for word in words:
        title = title.replace(word, "")
    if CJK.search(title):
        lines.insert(0, f"<title> «{page.title()}»")
    return _listed('Chinese outside data (mark data translate="no")', _unique(lines))


def wide_at(page: Page, width: int = NARROW_PX) -> list[str]:
    """No horizontal scroll: the document is no wider than the viewport of `width` px."""
    found = page.evaluate(WIDE, width)
    if found["scrollWidth"] <= width:
        return []
    return _listed(f"scrolls sideways at {width} px: scrollWidth {found['scrollWidth']}; "
                   "the innermost elements sticking out", [
                       f"{item['where']} right edge {item['right']:.0f}px «{item['text']}»"
                       for item in found["wide"]])


def small_body(page: Page, min_px: float = XLARGE_BODY_PX) -> list[str]:
    """The body's text size (what running text inherits) is at least `min_px`."""
    size = page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)")
    return [] if size >= min_px else [f"body text {size:g}px at ?size=xlarge, under {min_px:g}"]


def viewport(page: Page) -> list[str]:
    """`<meta name=viewport>` with width=device-width, and zoom allowed."""
    content = page.evaluate(VIEWPORT)
    if content is None:
        return ["no <meta name=viewport>"]
    settings = {key.strip().lower(): value.strip().lower() for key, _, value in
                (part.partition("=") for part in content.split(","))}
    problems = []
    if settings.get("width") != "device-width":
        problems.append(f'meta viewport "{content}" lacks width=device-width')
    if settings.get("user-scalable") in ("no", "0") or (
            float(settings.get("maximum-scale", "10") or 10) < 2):
        problems.append(f'meta viewport "{content}" stops zooming')
    return problems


@functools.cache
def _axe_source(path: Path) -> str:
    return path.read_text()


def axe_violations(page: Page, axe: Path) -> list[str]:
    """axe-core's WCAG 2.2 A/AA rules: no violation. Needs the page's JavaScript on (axe
    waits on timers), so a JavaScript-off page is not given to it."""
    if page.evaluate("typeof window.axe") == "undefined":
        page.evaluate(_axe_source(axe))  # as a plain script, so a page's CSP does not stop it
    result: dict[str, Any] = page.evaluate(AXE_RUN, {
        "runOnly": {"type": "tag", "values": AXE_TAGS}, "resultTypes": ["violations"]})
    lines = []
    for violation in result["violations"]:
        nodes = violation["nodes"]
        where = "; ".join(" ".join(map(str, node["target"])) + " (" + _first_line(node) + ")"
                          for node in nodes[:4])
        more = f" and {len(nodes) - 4} more" if len(nodes) > 4 else ""
        lines.append(f"{violation['id']} ({violation.get('impact')}): {violation['help']}: "
                     f"{where}{more}")
    return _listed("axe-core WCAG 2.2 A/AA violations", lines)


def _first_line(node: dict[str, Any]) -> str:
    summary = (node.get("failureSummary") or "").splitlines()
    return " ".join(line.strip() for line in summary[1:3]) or node.get("html", "")[:80]
