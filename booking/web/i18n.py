"""Languages of the pages: Chinese first (the source strings), English from its catalog.

The catalogs are `translations/<lang>/LC_MESSAGES/messages.po`, compiled in memory when the
app starts (no `.mo` is committed). Each request gets its own `Translations` and formatters in
its template context; nothing is installed globally, so two requests in two languages never
see each other's words.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path

from babel import Locale
from babel.core import negotiate_locale
from babel.dates import format_date, format_datetime, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

TRANSLATIONS = Path(__file__).parent / "translations"
LANGS = ("zh", "en")  # ?lang= values; zh is the default and the source language
HTML_LANG = {"zh": "zh-CN", "en": "en"}
BABEL_LOCALE = {"zh": "zh_Hans_CN", "en": "en"}
BEIJING = timezone(timedelta(hours=8), "CST")  # China keeps no daylight saving time


@cache
def translations(lang: str) -> NullTranslations:
    """The compiled catalog of a language; Chinese needs none (the sources are Chinese)."""
    if lang == "zh":
        return NullTranslations()
    with (TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po, locale=lang)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


def negotiate(accept_language: str | None) -> str:
    """The language an `Accept-Language` header prefers among ours, or zh."""
    wanted = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            wanted.append((quality, tag.replace("-", "_")))
    wanted.sort(key=lambda item: -item[0])
    found = negotiate_locale([tag for _, tag in wanted], ["zh", "en"], sep="_")
    return found if found in LANGS else "zh"


@dataclass(frozen=True, slots=True)
class Words:
    """One request's language: its translations and how it writes times and distances."""

    lang: str

    @property
    def html_lang(self) -> str:
        return HTML_LANG[self.lang]

    @property
    def locale(self) -> Locale:
        return Locale.parse(BABEL_LOCALE[self.lang])

    def gettext(self, message: str) -> str:
        return translations(self.lang).gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """The catalog keeps each form as a string of its own (booking/web/catalog.py), so
        the form is picked here: Chinese has one, English two."""
        return self.gettext(singular if n == 1 else plural)

    def date(self, moment: datetime) -> str:
        """`12月5日 星期六` / `Sat, Dec 5`, in Beijing time."""
        local = moment.astimezone(BEIJING)
        pattern = "MMMd日 EEEE" if self.lang == "zh" else "EEE, MMM d"
        return format_date(local, pattern, locale=self.locale)

    def time(self, moment: datetime) -> str:
        """`19:00` in Beijing time (both languages use the 24-hour clock here)."""
        return format_time(moment.astimezone(BEIJING), "HH:mm", locale=self.locale)

    def when(self, moment: datetime) -> str:
        """Date and time in Beijing time, e.g. `12月5日 星期六 19:00`."""
        return f"{self.date(moment)} {self.time(moment)}"

    def full(self, moment: datetime) -> str:
        """A moment with its year, for expiries and receipts."""
        return format_datetime(moment.astimezone(BEIJING), "medium", tzinfo=BEIJING,
                               locale=self.locale)

    def weekday(self, number: int) -> str:
        """The name of ISO weekday 1 (Monday) .. 7 (Sunday)."""
        return self.locale.days["format"]["wide"][(number - 1) % 7]

    def distance(self, metres: float) -> str:
        """`约 1.2 公里` / `about 1.2 km`; under a kilometre in metres."""
        _ = self.gettext
        if metres < 1000:
            rounded = format_decimal(round(metres / 10) * 10, locale=self.locale)
            return _("约 %(n)s 米") % {"n": rounded}
        km = format_decimal(round(metres / 1000, 1), format="#,##0.0", locale=self.locale)
        return _("约 %(n)s 公里") % {"n": km}
