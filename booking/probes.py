"""What load balancers and operators poll: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from booking.core.errors import documented
from booking.core.observability import metrics_text, seats_left_text
from booking.core.readcache import ReadCache
from booking.seats.seating import Seats

OPEN_COURSES = "SELECT id FROM courses WHERE status = 'published' AND starts_at > now() ORDER BY id"


class Health(msgspec.Struct):
    status: str


@get("/health", operation_id="health", tags=["ops"])
async def health() -> Health:
    """The process is alive."""
    return Health("ok")


@get("/ready", operation_id="ready", tags=["ops"], responses=documented(503))
async def ready(seats: NamedDependency[Seats],
                pool: NamedDependency[asyncpg.Pool]) -> Response[dict[str, str]]:
    """Redis (the gate's client: the server, or the cluster's nodes) and Postgres answer."""
    try:
        async with asyncio.timeout(2):
            await seats.gate.redis.ping()
            await pool.fetchval("SELECT 1")
    except Exception as exc:
        body = {"code": "unavailable", "detail": f"A store does not answer: {type(exc).__name__}."}
        return Response(body, status_code=503)
    return Response({"status": "ready"})


@get("/metrics", operation_id="metrics", tags=["ops"], media_type="text/plain; version=0.0.4",
     responses=documented(503))
async def metrics(pool: NamedDependency[asyncpg.Pool], seats: NamedDependency[Seats],
                  reads: NamedDependency[ReadCache]) -> bytes:
    """Prometheus metrics of every worker, and live seats left of the published courses."""
    rows = await reads.get("open-courses", lambda: pool.fetch(OPEN_COURSES))
    ids = [row["id"] for row in rows]
    left = await seats.gate.seats_left(ids)
    counts = {cid: n for cid, n in zip(ids, left, strict=True) if n is not None}
    return metrics_text(seats_left_text(counts))


HANDLERS: list[Any] = [health, ready, metrics]
