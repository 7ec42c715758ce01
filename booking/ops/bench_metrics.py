"""What the service itself says about a rush (its /metrics, every worker): grab answers by
outcome, and how long it took over the grabs it answered, by status.

wrk's latency covers every answer together. On release night about one answer in fifty is a 201,
which waits for the gate, the ledger's group commit and the answer, against a single trip for a
sold-out "no"; so the crowd's p99 falls among the 201s, and only the service's own histogram by
status shows it. The histogram's buckets are coarse, so a quantile is given as the bucket it falls
in (`p99 <= 100 ms`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

GRABS_LINE = re.compile(r'^booking_grabs_total\{outcome="([^"]+)"\} ([0-9.e+]+)$', re.M)
# The part of those answered from a process's memory, without Redis (booking/seats/memory.py).
MEMORY_LINE = re.compile(
    r'^booking_grabs_from_memory_total\{outcome="([^"]+)"\} ([0-9.e+]+)$', re.M)
# Greedy: a route template's own braces sit inside the labels.
BUCKET_LINE = re.compile(r'^booking_request_seconds_bucket\{(.*)\} ([0-9.e+]+)$', re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')
GRAB_ROUTE = "/v1/courses/{course_id}/bookings"


@dataclass
class ServiceView:
    """Counters read from /metrics: grab outcomes (`from_memory:<outcome>` for the part answered
    from memory) and the grab route's latency buckets, status -> {upper bound s: count}."""

    grabs: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    def since(self, before: ServiceView) -> ServiceView:
        """What was counted between `before` and this reading."""
        grabs = {k: n - before.grabs.get(k, 0) for k, n in self.grabs.items()}
        buckets = {status: {le: n - before.buckets.get(status, {}).get(le, 0)
                            for le, n in counts.items()}
                   for status, counts in self.buckets.items()}
        return ServiceView(grabs, buckets)

    def outcomes(self) -> dict[str, int]:
        return {k: round(n) for k, n in sorted(self.grabs.items()) if round(n) > 0}

    def latency(self) -> dict[str, dict[str, float | None]]:
        """Per status answered: how many, and the buckets (ms) its p50 and p99 fall in."""
        figures: dict[str, dict[str, float | None]] = {}
        for status, counts in sorted(self.buckets.items()):
            ordered = sorted(counts.items())
            total = ordered[-1][1] if ordered else 0
            if total <= 0:
                continue
            figures[status] = {"answers": round(total),
                               "p50_le_ms": _bucket_of(ordered, total, 0.50),
                               "p99_le_ms": _bucket_of(ordered, total, 0.99)}
        return figures


def _bucket_of(ordered: list[tuple[float, float]], total: float,
               quantile: float) -> float | None:
    """The upper bound (ms) of the first cumulative bucket holding `quantile` of the answers;
    None when it lies beyond the last finite bound."""
    for le, count in ordered:
        if count >= quantile * total:
            return None if le == float("inf") else round(le * 1000, 1)
    return None


def read_view(base: str) -> ServiceView:
    """The service's counters now; empty when /metrics does not answer."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return ServiceView()
    return parse_view(text)


def parse_view(text: str) -> ServiceView:
    """The counters of a /metrics page (Prometheus text format)."""
    grabs = {outcome: float(n) for outcome, n in GRABS_LINE.findall(text)}
    grabs.update({f"from_memory:{outcome}": float(n)
                  for outcome, n in MEMORY_LINE.findall(text)})
    buckets: dict[str, dict[float, float]] = {}
    for labels, n in BUCKET_LINE.findall(text):
        named = dict(LABEL.findall(labels))
        if named.get("route") == GRAB_ROUTE and named.get("method") == "POST":
            buckets.setdefault(named["status"], {})[float(named["le"])] = float(n)
    return ServiceView(grabs, buckets)


def answers(outcomes: dict[str, int]) -> int:
    """Grab answers counted by the service (those from memory are already among them)."""
    return sum(n for outcome, n in outcomes.items() if not outcome.startswith("from_memory:"))
