"""The pages' English catalog kept in step with the Chinese source strings.

`python -m booking.web.catalog` extracts every `_()` string of the templates (Jinja2's Babel
extractor) and of the page modules, adds the new ones to
`translations/en/LC_MESSAGES/messages.po` with an empty translation, drops the ones no longer
used, keeps every existing translation, and prints what is left to translate.
`tests/test_catalog.py` fails while anything is missing, so the English pages never show a
Chinese word by accident.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

WEB = Path(__file__).parent
METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
PLACEHOLDER = re.compile(r"%\([a-z_]+\)s")


def catalog_path(lang: str) -> Path:
    return WEB / "translations" / lang / "LC_MESSAGES" / "messages.po"


def source_strings() -> dict[str, list[tuple[str, int]]]:
    """Every string the pages translate, with where it is used."""
    found: dict[str, list[tuple[str, int]]] = {}
    for filename, line, message, _comments, _context in extract_from_dir(
            WEB, method_map=METHODS):
        if isinstance(message, tuple):  # ngettext: singular and plural, both translated
            for part in message:
                found.setdefault(part, []).append((filename, line))
        else:
            found.setdefault(message, []).append((filename, line))
    return found


def read_catalog(lang: str) -> Catalog:
    with catalog_path(lang).open("rb") as po:
        return read_po(po, locale=lang)


def update(lang: str = "en") -> list[str]:
    """Bring the catalog in step with the sources; the source strings still untranslated."""
    old = read_catalog(lang)
    new = Catalog(locale=lang, project="booking", version="1", fuzzy=False,
                  header_comment=old.header_comment, creation_date=old.creation_date,
                  revision_date=old.revision_date, msgid_bugs_address="",
                  last_translator="booking", language_team="booking")
    for message, places in sorted(source_strings().items()):
        known = old.get(message)
        new.add(message, known.string if known else "", locations=places)
    with catalog_path(lang).open("wb") as po:
        write_po(po, new, width=100, omit_header=False, sort_output=True,
                 include_lineno=False)
    return [m.id for m in new if m.id and not m.string]


def main() -> int:
    missing = update()
    for message in missing:
        print(f"untranslated: {message}")
    print(f"{len(missing)} string(s) to translate in {catalog_path('en')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
