"""The course list at `/`: filters, "near me" (the browser's location, or a teaching point
picked from a district's list without JavaScript), soonest or nearest first.

The same list as `GET /v1/courses` (and `GET /v1/venues?district=` for the teaching points),
through the same services. The query is read leniently: a value that cannot be used becomes a
sentence beside its field and is left out, never an error page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from booking.core.errors import NotFound
from booking.courses import DEFAULT_KM, MAX_KM, MIN_KM, CourseQuery, Courses, Place
from booking.venues import VenueOut, Venues
from booking.web.render import page, visitor

PAGE_SIZE = 20
RADII_KM = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)  # the radius choices; any other given is kept
MAX_OFFSET = 1_000_000
MAX_TEXT = 100


@dataclass(slots=True)
class Filters:
    """What the visitor asked for, as the list understands it, and what it could not use."""

    district: str | None = None
    category: str | None = None
    weekday: int | None = None
    available: bool = False
    km: float = DEFAULT_KM
    near: Place | None = None
    point: int | None = None
    offset: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    def query(self) -> CourseQuery:
        return CourseQuery(district=self.district, category=self.category,
                           available=True if self.available else None, weekday=self.weekday,
                           near=self.near, point=self.point, km=self.km, limit=PAGE_SIZE,
                           offset=self.offset)

    @property
    def radii(self) -> list[float]:
        """The radius choices, with the one asked for among them."""
        return sorted({*RADII_KM, self.km})


def _number(text: str | None, kind: Callable[[str], Any]) -> Any:
    """`text` as an int or a finite float, or None when it is empty or not a number."""
    if not text:
        return None
    try:
        value = kind(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_filters(params: Mapping[str, str], gettext: Callable[[str], str]) -> Filters:
    """The filters of a query string; each bad value is left out with a sentence saying so."""
    _ = gettext
    found = Filters(available=params.get("available") == "true")
    for name in ("district", "category"):
        value = params.get(name) or None
        if value is not None and (len(value) > MAX_TEXT or "\x00" in value):
            found.errors[name] = _("没有这个选项，请从列表中选择。")
            value = None
        setattr(found, name, value)
    weekday = _number(params.get("weekday"), int)
    if params.get("weekday") and not (weekday and 1 <= weekday <= 7):
        found.errors["weekday"] = _("请从列表中选择星期几。")
    else:
        found.weekday = weekday
    km = _number(params.get("km"), float)
    if params.get("km") and not (km and MIN_KM <= km <= MAX_KM):
        found.errors["km"] = _("范围应在 0.1 到 50 公里之间。")
    elif km:
        found.km = km
    found.near = _place(params, found, _)
    point = _number(params.get("point"), int)
    if params.get("point") and not (point and point >= 1):
        found.errors["point"] = _("找不到这个教学点，请重新选择。")
    elif found.near is None:  # a fresh location from the browser wins over a point kept
        found.point = point
    offset = _number(params.get("offset"), int)
    found.offset = offset if offset and 0 < offset <= MAX_OFFSET else 0
    return found


def _place(params: Mapping[str, str], found: Filters, _: Callable[[str], str]) -> Place | None:
    lat, lon = _number(params.get("lat"), float), _number(params.get("lon"), float)
    if not params.get("lat") and not params.get("lon"):
        return None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        found.errors["near"] = _("没能读到您的位置，请再试一次，或按区选择教学点。")
        return None
    return Place(lat, lon)


async def _origin(filters: Filters, venues: Venues, gettext: Callable[[str], str]
                  ) -> VenueOut | None:
    """The teaching point the list is near, if one was picked (a gone one is said so)."""
    if filters.point is None:
        return None
    try:
        return await venues.one(filters.point)
    except NotFound:
        filters.errors["point"] = gettext("找不到这个教学点，请重新选择。")
        filters.point = None
        return None


def _with(choices: list[str], chosen: str | None) -> list[str]:
    """A select's choices, with the one asked for among them (a list may be a second old)."""
    return choices if chosen is None or chosen in choices else [*choices, chosen]


@get("/", name="home")
async def home(request: Request, courses: NamedDependency[Courses],
               venues: NamedDependency[Venues]) -> Template:
    """The course list with its filters; `GET /v1/courses` takes the same query."""
    _ = visitor(request).words.gettext
    filters = read_filters(request.query_params, _)
    origin = await _origin(filters, venues, _)
    found = await courses.page(filters.query())
    points = await venues.listed(filters.district) if filters.district else []
    districts = _with(await venues.districts(), filters.district)
    categories = _with(await courses.categories(), filters.category)
    previous = max(0, filters.offset - PAGE_SIZE) if filters.offset else None
    return page(request, "listing.html", filters=filters, errors=filters.errors,
                courses=found.items, next_offset=found.next_offset, previous_offset=previous,
                districts=districts, categories=categories, points=points, origin=origin,
                now=datetime.now(UTC))


HANDLERS: list[Any] = [home]
