"""CSV files a venue or a resident opens in Excel: UTF-8 with a BOM (so Excel reads the
Chinese), and every cell formula-safe, since titles and names are what people typed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"


def safe_cell(value: object) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection): a leading
    `'` before a formula's first character."""
    text = str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def csv_bytes(rows: Iterable[Sequence[object]]) -> bytes:
    """The rows as a CSV file: BOM, CRLF lines, every cell through `safe_cell`."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return (BOM + out.getvalue()).encode("utf-8")
