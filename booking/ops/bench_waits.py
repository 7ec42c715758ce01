"""How long the bench's residents waited for their decisions, as the crowd timed each one.

Each wrk thread of `bench_rush.lua` counts its decisions (201, 200, 409) by answer and by the
tenth of a millisecond from the request's making to its answer, and writes the counts to
`wrk-<thread>-waits.txt` ("status tenths count" per line) at every checkpoint. One answer in
fifty is a 201, and the slowest percent of all answers is mostly 201s: the figures by answer
show which kind the tail is made of. These are measured waits, one per decision; wrk's
own latency figures add made-up samples for slow answers (its correction for coordinated
omission), which is why both are reported.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


Waits = dict[str, Counter[int]]  # answer's status -> decisions by whole tenths of a ms waited


def read_waits(work: Path, threads: int) -> Waits:
    """Decisions by answer and by whole tenths of a millisecond waited, over every thread's
    last checkpoint."""
    waits: Waits = {}
    for t in range(threads):
        path = work / f"wrk-{t}-waits.txt"
        if path.exists():
            for line in path.read_text().splitlines():
                status, tenths, n = line.split()
                waits.setdefault(status, Counter())[int(tenths)] += int(n)
    return dict(sorted(waits.items()))


def every_answer(waits: Waits) -> Counter[int]:
    """The decisions of every answer together."""
    merged: Counter[int] = Counter()
    for by_tenths in waits.values():
        merged.update(by_tenths)
    return merged


def wait_figures(waits: Counter[int]) -> dict[str, float | int | None]:
    """p50, p95, p99 and max in milliseconds (the upper edge of the tenth each falls in), and
    how many decisions were timed; None for each when none were."""
    total = sum(waits.values())
    figures: dict[str, float | int | None] = {"decisions_timed": total}
    if total == 0:
        return {**figures, **dict.fromkeys([*QUANTILES, "max"])}
    ordered = sorted(waits.items())
    for name, q in QUANTILES.items():
        figures[name] = _edge_ms(_at_rank(ordered, q * total))
    figures["max"] = _edge_ms(ordered[-1][0])
    return figures


def _at_rank(ordered: list[tuple[int, int]], rank: float) -> int:
    """The tenth holding the decision of this rank (1-based, rounded up) in sorted counts."""
    seen = 0
    for tenths, n in ordered:
        seen += n
        if seen >= rank:
            return tenths
    return ordered[-1][0]


def _edge_ms(tenths: int) -> float:
    return round((tenths + 1) / 10, 1)
