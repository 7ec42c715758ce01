"""(to be written) A venue's term imported from a spreadsheet (CSV or XLSX)."""

from __future__ import annotations

from typing import Any

HANDLERS: list[Any] = []
