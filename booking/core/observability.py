"""A view inside: Prometheus metrics and one JSON line per log event, with the request id.

With several workers, metrics go through prometheus-client's multiprocess mode:
`booking serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker starts,
and `/metrics` adds up what every worker wrote there.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from typing import Any

import msgspec
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

GRABS = Counter("booking_grabs_total", "Grab answers by outcome", ["outcome"])
GRABS_FROM_MEMORY = Counter(
    "booking_grabs_from_memory_total",
    "Grab and swap refusals (sold_out, not_open) a process answered from its memory of the "
    "gate, without Redis (a grab's is counted in booking_grabs_total too)", ["outcome"])
REQUEST_SECONDS = Histogram(
    "booking_request_seconds", "Request latency by route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5,
             10))
COMMIT_BATCH_ROWS = Histogram(
    "booking_commit_batch_rows", "Rows per group-commit INSERT",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
GRAB_BATCH_SIZE = Histogram(
    "booking_gate_batch_grabs", "Grabs per Redis pipeline", buckets=(1, 2, 5, 10, 20, 50, 100, 256))
RECONCILER_SEATS = Counter("booking_reconciler_seats_total",
                           "Seats the reconciler gave back or restored", ["action"])
HOLDS_EXPIRED = Counter("booking_holds_expired_total", "Unpaid holds expired by the sweeper")
SWEEPER_ROUNDS = Counter("booking_sweeper_rounds_total",
                         "Sweeper round attempts by outcome: `ran` (this worker took the round "
                         "lock) or `skipped` (another worker, here or on another host, held it)",
                         ["outcome"])
PROMOTIONS = Counter("booking_promotions_total", "Waiting residents given a freed seat")
PAYMENTS = Counter("booking_payment_callbacks_total",
                   "Payment callbacks by outcome (`repeated`: a provider reference seen before)",
                   ["outcome"])
STORE_ERRORS = Counter("booking_store_errors_total", "Errors talking to a store", ["store"])
RATE_LIMIT_UNCHECKED = Counter("booking_rate_limit_unchecked_total",
                               "Requests let through because their rate-limit counter did not "
                               "answer")


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: prometheus-client takes a lock and checks the labels on
    every `labels()` call, 2-3 us on a path that answers a grab in well under 100."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def count_grab(outcome: str) -> None:
    child(GRABS, outcome).inc()


def metrics_text(extra: str = "") -> bytes:
    """Every metric in the Prometheus text format, summed over the workers."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    return body + extra.encode()


def seats_left_text(seats: dict[int, int]) -> str:
    lines = ["# HELP booking_seats_left Seats left per published course, live from the gate.",
             "# TYPE booking_seats_left gauge"]
    lines += [f'booking_seats_left{{course_id="{cid}"}} {left}' for cid, left in seats.items()]
    return "\n".join(lines) + "\n"


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(event).decode()


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per HTTP request made by the outbox (or the demo crowd in a one-worker serve)
    # would drown everything else.
    logging.getLogger("httpx").setLevel(logging.WARNING)
