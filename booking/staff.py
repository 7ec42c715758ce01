"""(to be written) Venue staff: phones linked to a venue, who sign in as that venue."""

from __future__ import annotations

from typing import Any

HANDLERS: list[Any] = []
