"""(to be written) Check-in at the door and the attendance it records."""

from __future__ import annotations

from typing import Any

HANDLERS: list[Any] = []
