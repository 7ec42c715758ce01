"""(to be written) A resident's learning record for the city's credit bank, signed (EdDSA)."""

from __future__ import annotations

from typing import Any

HANDLERS: list[Any] = []
