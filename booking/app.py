"""The Litestar application: routes, error handling, and the lifespan that opens the stores."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from booking import bookings, courses, payments, venues, waitlist
from booking.context import Services, services
from booking.core.auth import Authenticator
from booking.core.db import STATEMENT_TIMEOUT_MS, create_pool
from booking.core.errors import EXCEPTION_HANDLERS, documented
from booking.core.middleware import observe
from booking.core.observability import configure_logging, metrics_text, seats_left_text
from booking.core.readcache import ReadCache
from booking.core.settings import ConfigError, Settings
from booking.core.stores import open_redis
from booking.ledger.commit import DEFAULT_DEADLINE_S, BookingLedger
from booking.ledger.outbox import dispatch_forever
from booking.lifecycle.sweeper import sweep_forever
from booking.seats import SeatGate
from booking.seats.ratelimit import Limit, RateLimiter
from booking.seats.reconcile import CourseLoader

MAX_BODY_BYTES = 64 * 1024


class Health(msgspec.Struct):
    status: str


@get("/health", operation_id="health", tags=["ops"])
async def health() -> Health:
    """The process is alive."""
    return Health("ok")


@get("/ready", operation_id="ready", tags=["ops"], responses=documented(503))
async def ready(request: Request) -> Response[dict[str, str]]:
    """Redis and Postgres both answer."""
    s = services(request)
    try:
        async with asyncio.timeout(2):
            await s.gate.redis.ping()
            await s.pool.fetchval("SELECT 1")
    except Exception as exc:
        body = {"code": "unavailable", "detail": f"A store does not answer: {type(exc).__name__}."}
        return Response(body, status_code=503)
    return Response({"status": "ready"})


OPEN_COURSES = "SELECT id FROM courses WHERE status = 'published' AND starts_at > now() ORDER BY id"


@get("/metrics", operation_id="metrics", tags=["ops"], media_type="text/plain; version=0.0.4",
     responses=documented(503))
async def metrics(request: Request) -> bytes:
    """Prometheus metrics of every worker, and live seats left of the published courses."""
    s = services(request)
    rows = await s.reads.get("open-courses", lambda: s.pool.fetch(OPEN_COURSES))
    ids = [row["id"] for row in rows]
    left = await s.gate.seats_left(ids)
    seats = {cid: n for cid, n in zip(ids, left, strict=True) if n is not None}
    return metrics_text(seats_left_text(seats))


@contextlib.asynccontextmanager
async def _stores(app: Litestar, settings: Settings) -> AsyncIterator[None]:
    if not settings.database_url or not settings.redis_url:
        raise ConfigError("DATABASE_URL and REDIS_URL must be set for the app; "
                          "`booking serve` sets them for you.")
    # A write must be over, one way or the other, well before the reconciler may judge its
    # seat stale: queueing and the statement each get at most a quarter of the pending timeout.
    write_budget_s = settings.pending_timeout_s / 4
    pool = await create_pool(settings.database_url, settings.db_pool_size,
                             int(min(STATEMENT_TIMEOUT_MS, write_budget_s * 1000)))
    redis = open_redis(settings.redis_url)
    gate = SeatGate(redis)
    ledger = BookingLedger(pool, gate, deadline_s=min(DEFAULT_DEADLINE_S, write_budget_s))
    app.state.services = Services(
        settings=settings, pool=pool, gate=gate, ledger=ledger,
        loader=CourseLoader(pool, gate, settings.pending_timeout_s),
        auth=Authenticator(settings.secret), reads=ReadCache(),
        limiter=RateLimiter(redis, Limit(*settings.rate_per_resident),
                            Limit(*settings.rate_per_address)))
    sweeper = asyncio.create_task(sweep_forever(pool, gate, settings.pending_timeout_s,
                                                settings.reconcile_interval_s))
    dispatcher = asyncio.create_task(dispatch_forever(pool, settings.webhook_url))
    try:
        yield
    finally:
        for task in (sweeper, dispatcher):  # each gives its connection back before the pool goes
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ledger.close()
        await gate.close()
        await app.state.services.limiter.close()
        await redis.aclose()
        await pool.close()


def _document_strict_bodies(app: Litestar) -> None:
    """Request bodies refuse unknown fields (msgspec's forbid_unknown_fields); Litestar does not
    say so in the OpenAPI schema, so mark them `additionalProperties: false` here."""
    strict = {body.__name__ for body in (venues.VenueIn, courses.CourseIn, courses.CoursePatch,
                                         bookings.SwapIn)}
    for name, schema in (app.openapi_schema.components.schemas or {}).items():
        if name in strict:
            schema.additional_properties = False


def create_app(settings: Settings | None = None) -> Litestar:
    """The ASGI app; settings come from the environment unless given (tests give them)."""
    settings = settings or Settings.from_env()
    configure_logging()
    openapi = OpenAPIConfig(
        title="booking", version="1.0.0", path="/schema",
        description="Grab seats in hot evening classes; venues publish courses.",
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}),
    )
    app = Litestar(
        route_handlers=[health, ready, metrics, *venues.HANDLERS, *courses.HANDLERS,
                        *bookings.HANDLERS, *waitlist.HANDLERS, *payments.HANDLERS],
        lifespan=[lambda app: _stores(app, settings)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi,
        request_max_body_size=MAX_BODY_BYTES,
        middleware=[observe],
        logging_config=None,  # configure_logging's JSON lines, not Litestar's own handlers
    )
    _document_strict_bodies(app)
    return app
