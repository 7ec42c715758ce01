"""Releases: entries (skeleton; filled in by issue 13's work)."""

from __future__ import annotations

from typing import Any

HANDLERS: list[Any] = []
