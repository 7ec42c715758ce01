"""The booking ids this process was told about, and the files they go to for the checker."""

from __future__ import annotations

import os
from pathlib import Path

RECEIVED: set[str] = set()  # booking ids this process was told about (201 and 200 answers)


def write_received(results: Path) -> Path:
    """One file per process, replaced whole, so workers never clash or leave half a file."""
    results.mkdir(parents=True, exist_ok=True)
    target = results / f"received-{os.getpid()}.txt"
    partial = target.with_suffix(".part")
    partial.write_text("".join(f"{booking_id}\n" for booking_id in sorted(RECEIVED)))
    partial.replace(target)
    return target


def received_files(results: Path) -> list[Path]:
    return sorted(results.glob("received-*.txt"))
