"""The Litestar application: routes, dependencies, error handling, and the lifespan that opens
the stores and builds what the handlers receive.

Handlers declare what they need by name: their domain's service (`bookings`, `courses`,
`waitlist`, `payments`) or a store (`pool`, `redis`, `seats`, `reads`); the lifespan keeps one
of each on `app.state` and `Provide` hands them out. The caller of a protected route is
`request.user`, set by the authentication middleware. Tests give `create_app` ready-made
stores.

One service per domain rather than its parts one by one: Litestar resolves two or more
dependencies of a handler in an anyio task group, which cost a sold-out grab 200 us.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Receive, Scope, Send

from booking import (
    attendance,
    bookings,
    courses,
    imports,
    payments,
    probes,
    record,
    signin,
    staff,
    venues,
    waitlist,
)
from booking.bookings import Bookings
from booking.core.auth import TokenVerifier, authentication
from booking.core.errors import EXCEPTION_HANDLERS
from booking.core.heap import freeze_startup_heap
from booking.core.middleware import observe
from booking.core.observability import configure_logging
from booking.core.readcache import ReadCache
from booking.core.settings import ConfigError, Settings
from booking.core.stores import (
    RedisClient,
    close_redis,
    open_pool,
    open_redis,
    write_budget_ms,
)
from booking.core.tasks import stop
from booking.courses import Courses
from booking.fast_grab import FastGrab
from booking.ledger.commit import DEFAULT_DEADLINE_S, BookingLedger
from booking.ledger.outbox import dispatch_forever
from booking.lifecycle.sweeper import sweep_forever
from booking.live import LiveSeats
from booking.payments import Payments
from booking.releases import drawing as release_drawing
from booking.releases import entries as release_entries
from booking.releases import service as release_service
from booking.seats import SeatGate
from booking.seats.memory import GateMemory
from booking.seats.quota import TermQuota
from booking.seats.ratelimit import Limit, RateLimiter
from booking.seats.reconcile import CourseLoader
from booking.seats.seating import Seats
from booking.signin import SignIn
from booking.waitlist import Waitlist
from booking.web.site import site

MAX_BODY_BYTES = 64 * 1024
# What handlers may ask for by name, each kept on app.state by the lifespan.
PROVIDED = ("settings", "pool", "redis", "seats", "reads", "bookings", "courses", "waitlist",
            "payments", "signin", "venues", "live", "staff", "imports", "attendance", "records",
            "releases", "entries", "draws")


@contextlib.asynccontextmanager
async def _opened(settings: Settings, pool: asyncpg.Pool | None,
                  redis: RedisClient | None) -> AsyncIterator[tuple[asyncpg.Pool, RedisClient]]:
    """The stores given, or new ones from the settings (closed again on the way out)."""
    if pool is not None and redis is not None:
        yield pool, redis
        return
    if not settings.database_url or not settings.redis_url:
        raise ConfigError("DATABASE_URL and REDIS_URL must be set for the app; "
                          "`booking serve` sets them for you.")
    own_pool = await open_pool(settings, settings.db_pool_size, write_budget_ms(settings))
    own_redis = open_redis(settings.redis_url, cluster=settings.redis_cluster)
    try:
        yield own_pool, own_redis
    finally:
        await close_redis(own_redis)
        await own_pool.close()


def _lifespan(settings: Settings, pool: asyncpg.Pool | None, redis: RedisClient | None,
              background: bool, live: LiveSeats) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with _opened(settings, pool, redis) as (db, cache):
            gate = SeatGate(cache)
            memory = GateMemory(cache)  # sold-out and not-open answers without Redis
            pending_draws = release_drawing.PendingDraws(db)
            seats = Seats(gate, CourseLoader(db, gate, settings.pending_timeout_s), memory,
                          closed_because=pending_draws.refusal)
            memory.start()
            ledger = BookingLedger(db, gate, deadline_s=min(DEFAULT_DEADLINE_S,
                                                            settings.pending_timeout_s / 4))
            limiter = RateLimiter(cache, Limit(*settings.rate_per_resident),
                                  Limit(*settings.rate_per_address))
            reads = ReadCache()
            quota = TermQuota(cache, settings.pending_timeout_s)  # the term caps' side in Redis
            app.state.update(settings=settings, pool=db, redis=cache, seats=seats, reads=reads,
                             bookings=Bookings(seats, ledger, limiter, db, quota),
                             courses=Courses(db, seats, reads), waitlist=Waitlist(seats, db),
                             payments=Payments(db, settings.payment_secret),
                             signin=SignIn(db, settings), venues=venues.Venues(db, reads),
                             staff=staff.Staff(db),
                             imports=imports.Imports(db, seats, reads),
                             attendance=attendance.Attendance(db, settings.secret),
                             records=record.Records(db, record.RecordSigner.of(settings)),
                             releases=release_service.Releases(db, seats, reads),
                             entries=release_entries.Entries(db),
                             draws=release_drawing.Draws(db, seats))
            live.start(seats)  # its ChannelsPlugin is one of the app's plugins
            app.state.live = live
            tasks = [asyncio.create_task(sweep_forever(db, gate, settings.pending_timeout_s,
                                                       settings.reconcile_interval_s)),
                     asyncio.create_task(dispatch_forever(db, settings.webhook_url)),
                     asyncio.create_task(release_drawing.close_forever(app.state.draws))
                     ] if background else []
            freeze_startup_heap()  # what exists now lives as long as the worker
            try:
                yield
            finally:
                await live.stop()
                await memory.stop()
                for task in tasks:  # each gives its connection back before the pool goes
                    await stop(task)
                await ledger.close()
                await gate.close()
                await limiter.close()
                await quota.close()

    return lifespan


def _from_state(app: Callable[[], Litestar], name: str) -> Provide:
    """A dependency read from the app's state. It takes no parameters, so Litestar has
    nothing to parse for it per request."""
    def provide() -> Any:
        return app().state[name]

    return Provide(provide, sync_to_thread=False)


def _document_strict_bodies(app: Litestar) -> None:
    """Request bodies refuse unknown fields (msgspec's forbid_unknown_fields); Litestar does not
    say so in the OpenAPI schema, so mark them `additionalProperties: false` here."""
    strict = {body.__name__ for body in (venues.VenueIn, courses.CourseIn, courses.CoursePatch,
                                         bookings.SwapIn, signin.LoginCodeIn, signin.TokenIn,
                                         staff.StaffIn,
                                         attendance.CheckinIn, release_service.ReleaseIn,
                                         release_entries.EntryIn)}
    for name, schema in (app.openapi_schema.components.schemas or {}).items():
        if name in strict:
            schema.additional_properties = False


class BookingApp(Litestar):
    """Litestar with two things in front of its router: the request observer (request id and
    metrics, core/middleware.py) and the grab's fast path (fast_grab.py)."""

    def __init__(self, verifier: TokenVerifier, **config: Any) -> None:
        super().__init__(**config)
        grab_route = next(route for route in self.routes if route.path == bookings.GRAB_PATH)
        self._fast_grab = FastGrab(verifier, self.state, grab_route.path_format)
        self._observed = observe(self._fast_or_routed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._observed(scope, receive, send)  # it hands any other scope on untouched

    async def _fast_or_routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._fast_grab.answer(scope, send):
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, pool: asyncpg.Pool | None = None,
               redis: RedisClient | None = None, background: bool = True) -> Litestar:
    """The ASGI app. Settings come from the environment unless given; given `pool` and
    `redis` are used (and left open) instead of opening stores; `background=False` leaves the
    sweeper and the outbox dispatcher off (tests that drive those themselves)."""
    settings = settings or Settings.from_env()
    configure_logging()
    openapi = OpenAPIConfig(
        title="booking", version="1.0.0", path="/schema",
        description="Grab seats in hot evening classes; venues publish courses.",
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}),
    )
    verifier = TokenVerifier(settings.secret)
    pages = site(settings)
    live = LiveSeats.for_app(settings, redis)
    app = BookingApp(
        verifier,
        route_handlers=[*probes.HANDLERS, *venues.HANDLERS, *courses.HANDLERS,
                        *bookings.HANDLERS, *waitlist.HANDLERS, *payments.HANDLERS,
                        *signin.HANDLERS, *staff.HANDLERS, *imports.HANDLERS, *attendance.HANDLERS,
                        *record.HANDLERS, *release_service.HANDLERS,
                        *release_entries.HANDLERS, *release_drawing.HANDLERS,
                        pages.router],
        template_config=pages.templates,
        state=State({"verifier": verifier}),
        dependencies={name: _from_state(lambda: app, name) for name in PROVIDED},
        lifespan=[_lifespan(settings, pool, redis, background, live)],
        plugins=[live.plugin],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi,
        request_max_body_size=MAX_BODY_BYTES,
        middleware=[authentication(verifier)],
        logging_config=None,  # configure_logging's JSON lines, not Litestar's own handlers
    )
    _document_strict_bodies(app)
    return app
