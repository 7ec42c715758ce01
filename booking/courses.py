"""Courses: published by venues, listed publicly with live seat counts from the gate.

The list finds courses near a place (the visitor's own location, or a teaching point they
picked) in plain SQL: a bounding box that the btree index `venues_by_place (lat, lon)` narrows,
then the haversine distance of what is left. All coordinates are WGS-84.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Request, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, Parameter

from booking.core.auth import Principal, check_owner, requires
from booking.core.errors import ApiError, Conflict, Forbidden, Invalid, NotFound, documented
from booking.core.fields import MAX_ID, NO_NUL, storable_id
from booking.core.readcache import ReadCache
from booking.ledger.outbox import add_notification
from booking.ledger.promotions import promote_waiting
from booking.ledger.refunds import owe_refunds
from booking.seats.seating import COURSE_CANCELLED, Seats

MAX_CAPACITY = 10_000
MAX_PRICE_CENTS = 10_000_000
CourseId = Annotated[int, Parameter(description="Course id")]

ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=60, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(max_length=5000, pattern=NO_NUL)]
Moment = Annotated[datetime, msgspec.Meta(tz=True)]
Capacity = Annotated[int, msgspec.Meta(ge=1, le=MAX_CAPACITY)]
Price = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRICE_CENTS)]
HoldMinutes = Annotated[int, msgspec.Meta(ge=1, le=1440)]
Lessons = Annotated[int, msgspec.Meta(ge=1, le=52)]  # weekly lessons from starts_at
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=NO_NUL)]
DEFAULT_KM = 5.0  # the radius of "near me" unless the visitor says otherwise
MIN_KM, MAX_KM = 0.1, 50.0
EARTH_RADIUS_M = 6_371_008.8  # the mean radius (IUGG); haversine is within 0.5 % of WGS-84


class CourseIn(msgspec.Struct, forbid_unknown_fields=True):
    title: ShortText
    category: Category
    teacher: ShortText
    starts_at: Moment
    ends_at: Moment
    capacity: Capacity
    sales_open_at: Moment
    description: Description = ""
    price_cents: Price = 0
    venue_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None
    hold_minutes: HoldMinutes = 10  # how long a hold of a paid course waits for its payment
    cancel_deadline: Moment | None = None  # None: cancelling is possible until starts_at
    lessons: Lessons = 1  # the course meets this many times, weekly from starts_at
    code: Code | None = None  # the venue's own code for it (a term import updates by it)


class CoursePatch(msgspec.Struct, forbid_unknown_fields=True):
    title: ShortText | msgspec.UnsetType = msgspec.UNSET
    category: Category | msgspec.UnsetType = msgspec.UNSET
    teacher: ShortText | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    starts_at: Moment | msgspec.UnsetType = msgspec.UNSET
    ends_at: Moment | msgspec.UnsetType = msgspec.UNSET
    capacity: Capacity | msgspec.UnsetType = msgspec.UNSET
    price_cents: Price | msgspec.UnsetType = msgspec.UNSET
    sales_open_at: Moment | msgspec.UnsetType = msgspec.UNSET
    status: Literal["cancelled"] | msgspec.UnsetType = msgspec.UNSET
    hold_minutes: HoldMinutes | msgspec.UnsetType = msgspec.UNSET
    cancel_deadline: Moment | msgspec.UnsetType | None = msgspec.UNSET
    lessons: Lessons | msgspec.UnsetType = msgspec.UNSET
    code: Code | msgspec.UnsetType | None = msgspec.UNSET


class CourseOut(msgspec.Struct):
    id: int
    venue_id: int
    title: str
    category: str
    teacher: str
    description: str
    starts_at: datetime
    ends_at: datetime
    capacity: int
    price_cents: int
    sales_open_at: datetime
    status: str
    district: str
    venue_name: str
    address: str
    seats_left: int
    hold_minutes: int
    cancel_deadline: datetime | None
    lessons: int = 1
    code: str | None = None
    release_id: int | None = None  # the release the course opens in; None: none
    distance_m: int | None = None  # metres from the place asked about; None without one


class CoursePage(msgspec.Struct):
    items: list[CourseOut]
    next_offset: int | None


COLUMNS = """c.id, c.venue_id, c.title, c.category, c.teacher, c.description, c.starts_at,
c.ends_at, c.capacity, c.price_cents, c.sales_open_at, c.status, v.district,
v.name AS venue_name, v.address, c.hold_minutes, c.cancel_deadline, c.lessons, c.code,
c.release_id"""
SELECT_COURSE = f"""
SELECT {COLUMNS} FROM courses c JOIN venues v ON v.id = c.venue_id WHERE c.id = $1
"""
INSERT_COURSE = """
INSERT INTO courses (venue_id, title, category, teacher, description, starts_at, ends_at,
                     capacity, price_cents, sales_open_at, hold_minutes, cancel_deadline,
                     lessons, code)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id
"""
CANCEL_COURSE_BOOKINGS = """
UPDATE bookings SET status = 'cancelled', cancelled_at = now()
WHERE course_id = $1 AND booking_active(status) RETURNING id::text, resident_id, paid_at
"""
CLEAR_WAITLIST = """
UPDATE waitlist SET status = 'cleared', updated_at = now()
WHERE course_id = $1 AND status = 'waiting' RETURNING resident_id
"""
PATCHABLE = ("title", "category", "teacher", "description", "starts_at", "ends_at", "capacity",
             "price_cents", "sales_open_at", "status", "hold_minutes", "cancel_deadline",
             "lessons", "code")
LIST_FILTERS = {"venue_id", "district", "category", "available", "weekday", "lat", "lon",
                "point", "km", "limit", "offset"}
VENUE_PLACE = "SELECT lat, lon FROM venues WHERE id = $1"
LOCK_COURSE = """
SELECT venue_id, status, sales_open_at, capacity, release_id FROM courses WHERE id = $1 FOR UPDATE
"""
# A course's release: its mode and whether it has been drawn.
RELEASE_OF = """
SELECT r.mode, d.drawn_at IS NOT NULL AS drawn
FROM releases r LEFT JOIN release_draws d ON d.release_id = r.id WHERE r.id = $1
"""
CATEGORIES = """
SELECT DISTINCT category FROM courses WHERE status = 'published' ORDER BY category LIMIT 500
"""
# ISO weekday (1 Monday .. 7 Sunday) of a course's start in Beijing time (UTC+8, no DST).
BEIJING_WEEKDAY = "extract(isodow FROM (c.starts_at AT TIME ZONE 'UTC') + interval '8 hours')::int"
# Metres from the place ($lat, $lon) to the course's venue; least() keeps rounding inside asin.
HAVERSINE_M = """{radius} * 2 * asin(least(1, sqrt(
    power(sin(radians(v.lat - {lat}) / 2), 2)
    + cos(radians({lat})) * cos(radians(v.lat)) * power(sin(radians(v.lon - {lon}) / 2), 2))))"""

# Constraint violations that are the caller's doing, as the answer they get.
CONSTRAINT_ERRORS: dict[str, ApiError] = {
    "courses_not_oversold": Conflict("Capacity cannot go below the number of active bookings.",
                                     code="capacity_below_bookings"),
    "courses_ends_after_start": Invalid("ends_at must be after starts_at."),
    "courses_sales_open_before_start": Invalid("sales_open_at must not be after starts_at."),
    "courses_venue_id_fkey": NotFound("No venue with that id."),
    "courses_code_per_venue": Conflict("Another course of this venue has that code.",
                                       code="code_taken"),
}


def constraint_error(exc: asyncpg.IntegrityConstraintViolationError) -> ApiError:
    known = CONSTRAINT_ERRORS.get(getattr(exc, "constraint_name", None) or "")
    if known is None:
        raise exc
    return known.again()


def course_out(row: asyncpg.Record, seats_left: int | None) -> CourseOut:
    left = 0 if row["status"] != "published" or seats_left is None else seats_left
    fields = dict(row)
    metres = fields.pop("distance_m", None)
    return CourseOut(**fields, seats_left=left,
                     distance_m=None if metres is None else round(metres))


@dataclass(frozen=True, slots=True)
class Place:
    """A point on the map in WGS-84 degrees (what GPS and browsers report)."""

    lat: float
    lon: float


def place_of(lat: float | None, lon: float | None) -> Place | None:
    """The place given by a latitude and a longitude, both or neither."""
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        raise Invalid("Give lat and lon together.", code="location_incomplete")
    return Place(lat, lon)


def bounding_box(place: Place, km: float) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) holding every point within `km` of `place`. Near a
    pole or across the 180th meridian it spans every longitude (correct, merely less narrow)."""
    angle = km * 1000 / EARTH_RADIUS_M
    lat_min, lat_max = place.lat - math.degrees(angle), place.lat + math.degrees(angle)
    if lat_min <= -90 or lat_max >= 90:
        return max(lat_min, -90), min(lat_max, 90), -180, 180
    spread = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(math.radians(place.lat)))))
    lon_min, lon_max = place.lon - spread, place.lon + spread
    if lon_min < -180 or lon_max > 180:
        return lat_min, lat_max, -180, 180
    return lat_min, lat_max, lon_min, lon_max


@dataclass(frozen=True, slots=True)
class CourseQuery:
    """The filters of a course list. `near` (a place) or `point` (a venue id, meaning its
    place) keeps the courses within `km` of it, nearest first; at most one of the two."""

    venue_id: int | None = None
    district: str | None = None
    category: str | None = None
    available: bool | None = None
    weekday: int | None = None  # ISO weekday of starts_at in Beijing time
    near: Place | None = None
    point: int | None = None
    km: float = DEFAULT_KM
    limit: int = 50
    offset: int = 0


class _Sql:
    """A WHERE clause and its arguments, numbered as they are added."""

    def __init__(self) -> None:
        self.where: list[str] = ["TRUE"]
        self.args: list[object] = []

    def arg(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


class Courses:
    """The courses domain's service: what the `/v1` handlers and the pages call."""

    def __init__(self, pool: asyncpg.Pool, seats: Seats, reads: ReadCache) -> None:
        self.pool = pool
        self.seats = seats
        self.reads = reads

    async def row(self, course_id: int) -> asyncpg.Record:
        """The course's row as Postgres has it (fresh), or NotFound."""
        row = await self.pool.fetchrow(SELECT_COURSE, course_id) \
            if storable_id(course_id) else None
        if row is None:
            raise NotFound.of("course")
        return row

    async def one(self, course_id: int) -> CourseOut:
        """One course with its live seats_left (its text from the one-second cache)."""
        row = await self.reads.get(("course", course_id), lambda: self.row(course_id))
        (count,) = await self.seats.seats_left([course_id])
        return course_out(row, count)

    async def place_of_point(self, venue_id: int) -> Place:
        """Where a teaching point is; a 400 `unknown_point` when there is no such venue."""
        row = await self.reads.get(("venue-place", venue_id), lambda: self.pool.fetchrow(
            VENUE_PLACE, venue_id)) if storable_id(venue_id) else None
        if row is None:
            raise Invalid("No teaching point (venue) with that id.", code="unknown_point")
        return Place(row["lat"], row["lon"])

    async def categories(self) -> list[str]:
        """The categories of published courses, for a filter's choices."""
        rows = await self.reads.get("categories", lambda: self.pool.fetch(CATEGORIES))
        return [row["category"] for row in rows]

    async def page(self, query: CourseQuery) -> CoursePage:
        """Courses with live seats_left: nearest first within `km` of a place given, else
        soonest first."""
        if query.near is not None and query.point is not None:
            raise Invalid("Give either lat and lon or point, not both.", code="location_twice")
        near = query.near
        if query.point is not None:
            near = await self.place_of_point(query.point)
        text, args = list_sql(query, near)
        rows = await self.reads.get((text, *args), lambda: self.pool.fetch(text, *args))
        more = len(rows) > query.limit
        rows = rows[:query.limit]
        counts = await self.seats.seats_left([row["id"] for row in rows])
        items = [course_out(row, count) for row, count in zip(rows, counts, strict=True)]
        return CoursePage(items=items,
                          next_offset=query.offset + query.limit if more else None)

    async def create(self, data: CourseIn, principal: Principal) -> CourseOut:
        """Publish a course. A venue publishes for itself; an operator names the venue_id."""
        venue_id = principal.venue_id if principal.role == "venue" else data.venue_id
        if venue_id is None:
            raise Invalid("An operator must give venue_id.")
        if principal.role == "venue" and data.venue_id not in (None, principal.venue_id):
            raise Forbidden("A venue can publish courses only for itself.")
        try:
            course_id = await self.pool.fetchval(
                INSERT_COURSE, venue_id, data.title, data.category, data.teacher,
                data.description, data.starts_at, data.ends_at, data.capacity, data.price_cents,
                data.sales_open_at, data.hold_minutes, data.cancel_deadline, data.lessons,
                data.code)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise constraint_error(exc) from exc
        self.reads.clear()
        return await self._reloaded(course_id)

    async def update(self, course_id: int, data: CoursePatch,
                     principal: Principal) -> CourseOut:
        """Change a course: capacity (never below active bookings), times, texts, or cancel
        it (every booking, hold and place with it, each resident told)."""
        changes = {name: getattr(data, name) for name in PATCHABLE
                   if getattr(data, name) is not msgspec.UNSET}
        if not storable_id(course_id):
            raise NotFound.of("course")
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(LOCK_COURSE, course_id)
            if current is None:
                raise NotFound.of("course")
            check_owner(principal, current["venue_id"])
            if current["status"] == "cancelled" and changes:
                raise COURSE_CANCELLED.again()
            if current["release_id"] is not None:
                await _check_release_allows(conn, current, changes)
            if changes:
                await _apply(conn, course_id, changes)
        self.reads.clear()
        loaded = await self.seats.loader.load(course_id)
        if loaded is not None and loaded.seats_left > 0 and await promote_waiting(
                self.pool, self.seats.gate, course_id):  # more seats: the waitlist first
            loaded = await self.seats.loader.load(course_id)
        return course_out(await self.row(course_id), loaded.seats_left if loaded else None)

    async def _reloaded(self, course_id: int) -> CourseOut:
        """The course as it is now, with the gate reloaded from Postgres after a change."""
        loaded = await self.seats.loader.load(course_id)
        return course_out(await self.row(course_id), loaded.seats_left if loaded else None)


def list_sql(query: CourseQuery, near: Place | None) -> tuple[str, list[object]]:
    """The course list's SQL and its arguments; `near` is the query's place, if any (a
    point already looked up)."""
    sql = _Sql()
    for column, value in (("c.venue_id", query.venue_id), ("v.district", query.district),
                          ("c.category", query.category)):
        if value is not None:
            sql.where.append(f"{column} = {sql.arg(value)}")
    if query.weekday is not None:
        sql.where.append(f"{BEIJING_WEEKDAY} = {sql.arg(query.weekday)}")
    if query.available:
        sql.where.append("c.status = 'published' AND c.active_bookings < c.capacity")
    elif query.available is False:
        sql.where.append("NOT (c.status = 'published' AND c.active_bookings < c.capacity)")
    distance, order = "NULL::float8", "c.starts_at, c.id"
    if near is not None:
        distance, order = _near(sql, near, query.km), "distance_m, c.starts_at, c.id"
    text = (f"SELECT {COLUMNS}, {distance} AS distance_m "
            f"FROM courses c JOIN venues v ON v.id = c.venue_id "
            f"WHERE {' AND '.join(sql.where)} ORDER BY {order} "
            f"LIMIT {sql.arg(query.limit + 1)} OFFSET {sql.arg(query.offset)}")
    return text, sql.args


def _near(sql: _Sql, place: Place, km: float) -> str:
    """Keep the venues within `km` of `place` (the box first, for the index); the distance
    expression in metres."""
    lat_min, lat_max, lon_min, lon_max = bounding_box(place, km)
    sql.where.append(f"v.lat BETWEEN {sql.arg(lat_min)} AND {sql.arg(lat_max)}")
    sql.where.append(f"v.lon BETWEEN {sql.arg(lon_min)} AND {sql.arg(lon_max)}")
    distance = HAVERSINE_M.format(radius=EARTH_RADIUS_M, lat=sql.arg(place.lat),
                                  lon=sql.arg(place.lon))
    sql.where.append(f"{distance} <= {sql.arg(km * 1000)}")
    return distance


async def _check_release_allows(conn: asyncpg.Connection, current: asyncpg.Record,
                                changes: dict[str, object]) -> None:
    """A course in a release opens when its release says: its sales_open_at is not the
    venue's to move; and a draw counts the seats it had at the close, so its capacity stays as
    it is until the draw is done."""
    release_id = current["release_id"]
    opening = changes.get("sales_open_at", current["sales_open_at"])
    if opening != current["sales_open_at"]:
        raise Conflict(f"This course opens with release {release_id}; its sales_open_at "
                       "cannot be changed.", code="course_in_release",
                       extra={"release_id": release_id})
    if changes.get("capacity", current["capacity"]) == current["capacity"]:
        return
    release = await conn.fetchrow(RELEASE_OF, release_id)
    if release["mode"] != "fcfs" and not release["drawn"]:
        raise Conflict(f"Release {release_id} has not been drawn yet; the capacity can change "
                       "after the draw.", code="draw_pending", extra={"release_id": release_id})


async def _apply(conn: asyncpg.Connection, course_id: int, changes: dict[str, object]) -> None:
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    try:
        await conn.execute(f"UPDATE courses SET {sets}, updated_at = now() WHERE id = $1",
                           course_id, *changes.values())
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise constraint_error(exc) from exc
    if changes.get("status") == "cancelled":
        await cancel_everyone(conn, course_id)


async def cancel_everyone(conn: asyncpg.Connection, course_id: int) -> None:
    """A cancelled course: every booking and hold cancelled, the paid ones' refunds owed, the
    waitlist cleared, and each resident told (in the transaction that cancels the course)."""
    cancelled = await conn.fetch(CANCEL_COURSE_BOOKINGS, course_id)
    for row in cancelled:
        await add_notification(conn, "course_cancelled", row["resident_id"],
                               {"course_id": course_id, "booking_id": row["id"]})
    paid = [row["id"] for row in cancelled if row["paid_at"] is not None]
    await owe_refunds(conn, paid, "course_cancelled")
    for row in await conn.fetch(CLEAR_WAITLIST, course_id):
        await add_notification(conn, "course_cancelled", row["resident_id"],
                               {"course_id": course_id, "waitlist": "cleared"})


# --- /v1 --------------------------------------------------------------------------------------

@post("/v1/courses", operation_id="createCourse", tags=["courses"],
      **requires("venue", "operator", errors=(404, 409, 413)))
async def create_course(request: Request[Principal, Any, State], data: JSONBody[CourseIn],
                        courses: NamedDependency[Courses]) -> CourseOut:
    """Publish a course. A venue publishes for itself; an operator names the venue_id."""
    return await courses.create(data, request.user)


@get("/v1/courses", operation_id="listCourses", tags=["courses"],
     responses=documented(400, 503))
async def list_courses(
    request: Request,
    courses: NamedDependency[Courses],
    venue_id: Annotated[int | None, Parameter(ge=1, le=MAX_ID)] = None,
    district: Annotated[str | None, Parameter(max_length=100, pattern=NO_NUL)] = None,
    category: Annotated[str | None, Parameter(max_length=60, pattern=NO_NUL)] = None,
    available: FromQuery[bool | None] = None,
    weekday: Annotated[int | None, Parameter(
        ge=1, le=7, description="Day of the week the course starts, in Beijing time (UTC+8): "
        "1 Monday .. 7 Sunday.")] = None,
    lat: Annotated[float | None, Parameter(
        ge=-90, le=90, description="Near this latitude (WGS-84 degrees, as GPS and browsers "
        "give it); with lon.")] = None,
    lon: Annotated[float | None, Parameter(
        ge=-180, le=180, description="Near this longitude (WGS-84 degrees); with lat.")] = None,
    point: Annotated[int | None, Parameter(
        ge=1, le=MAX_ID, description="Near this teaching point (a venue id): its place instead "
        "of lat and lon.")] = None,
    km: Annotated[float, Parameter(
        ge=MIN_KM, le=MAX_KM, description="Radius around lat/lon or point, in kilometres.")
    ] = DEFAULT_KM,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=1_000_000)] = 0,
) -> CoursePage:
    """Courses with live seats_left, soonest first; `available=true` keeps those with seats.

    With a place (`lat` + `lon`, or `point`): only the courses within `km` of it, nearest
    first, each with `distance_m`. A 400 says `location_incomplete` (lat without lon, or the
    other way round), `location_twice` (both a place and a point) or `unknown_point`."""
    unknown = set(request.query_params) - LIST_FILTERS
    if unknown:
        raise Invalid(f"Unknown query parameter: {', '.join(sorted(unknown))}.")
    return await courses.page(CourseQuery(
        venue_id=venue_id, district=district, category=category, available=available,
        weekday=weekday, near=place_of(lat, lon), point=point, km=km, limit=limit,
        offset=offset))


@get("/v1/courses/{course_id:int}", operation_id="getCourse", tags=["courses"],
     responses=documented(400, 404, 503))
async def get_course(course_id: CourseId, courses: NamedDependency[Courses]) -> CourseOut:
    """One course with its live seats_left."""
    return await courses.one(course_id)


@patch("/v1/courses/{course_id:int}", operation_id="updateCourse", tags=["courses"],
       **requires("venue", "operator", errors=(404, 409, 413)))
async def update_course(request: Request[Principal, Any, State], course_id: CourseId,
                        data: JSONBody[CoursePatch],
                        courses: NamedDependency[Courses]) -> CourseOut:
    """Change a course: capacity (never below active bookings), times, texts, or cancel it."""
    return await courses.update(course_id, data, request.user)


HANDLERS: list[Any] = [create_course, list_courses, get_course, update_course]
