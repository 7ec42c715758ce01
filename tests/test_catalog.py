"""The English catalog covers every string the pages show, and says it in English."""

from __future__ import annotations

import re

from booking.web.catalog import PLACEHOLDER, read_catalog, source_strings

CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")


def test_every_page_string_has_an_english_translation():
    catalog = read_catalog("en")
    missing = [message for message in source_strings()
               if not (catalog.get(message) and catalog.get(message).string)]
    assert missing == [], "run `python -m booking.web.catalog` and translate these"


def test_the_catalog_holds_no_strings_the_pages_no_longer_use():
    used = set(source_strings())
    stale = [message.id for message in read_catalog("en") if message.id and message.id not in used]
    assert stale == [], "run `python -m booking.web.catalog` to drop them"


def test_translations_are_english_and_keep_their_placeholders():
    wrong = []
    for message in read_catalog("en"):
        if not message.id or not message.string:
            continue
        if CJK.search(message.string):
            wrong.append(f"{message.id!r}: Chinese in {message.string!r}")
        if sorted(PLACEHOLDER.findall(message.id)) != sorted(PLACEHOLDER.findall(message.string)):
            wrong.append(f"{message.id!r}: placeholders differ in {message.string!r}")
    assert wrong == []
