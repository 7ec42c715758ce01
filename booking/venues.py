"""Venues: the teaching points that publish courses.

Coordinates are WGS-84 everywhere (what GPS and browsers report). Chinese map apps (AMap/高德,
Tencent) show GCJ-02 coordinates, 100-700 m off: whoever enters a venue converts them first.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from booking.core.auth import requires
from booking.core.errors import NotFound, documented
from booking.core.fields import NO_NUL, storable_id
from booking.core.readcache import ReadCache

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
District = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL)]
GCJ_02_NOTE = ("WGS-84 degrees, as GPS and browsers report them. AMap (高德) and Tencent maps "
               "show GCJ-02 coordinates, 100-700 m off: convert those to WGS-84 first.")


class VenueIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    district: District
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=NO_NUL)]
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90, description=f"Latitude in {GCJ_02_NOTE}")]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180,
                                       description=f"Longitude in {GCJ_02_NOTE}")]


class VenueOut(msgspec.Struct):
    id: int
    name: str
    district: str
    address: str
    lat: float
    lon: float


COLUMNS = "id, name, district, address, lat, lon"
INSERT_VENUE = f"""
INSERT INTO venues (name, district, address, lat, lon) VALUES ($1, $2, $3, $4, $5)
RETURNING {COLUMNS}
"""
LIST_VENUES = f"SELECT {COLUMNS} FROM venues ORDER BY id LIMIT 1000"
VENUES_IN_DISTRICT = f"SELECT {COLUMNS} FROM venues WHERE district = $1 ORDER BY id LIMIT 1000"
SELECT_VENUE = f"SELECT {COLUMNS} FROM venues WHERE id = $1"
DISTRICTS = "SELECT DISTINCT district FROM venues ORDER BY district LIMIT 1000"


class Venues:
    """The venues domain's service: what the `/v1` handlers and the pages call. Reads go
    through the one-second read cache (a district's teaching points are a public list)."""

    def __init__(self, pool: asyncpg.Pool, reads: ReadCache) -> None:
        self.pool = pool
        self.reads = reads

    async def create(self, data: VenueIn) -> VenueOut:
        row = await self.pool.fetchrow(INSERT_VENUE, data.name, data.district, data.address,
                                       data.lat, data.lon)
        self.reads.clear()
        return VenueOut(**dict(row))

    async def listed(self, district: str | None = None) -> list[VenueOut]:
        """Every teaching point, or those of one district, in the order they were added."""
        if district is None:  # not cached: what an operator reads right after adding one
            rows = await self.pool.fetch(LIST_VENUES)
        else:
            rows = await self.reads.get(("venues", district), lambda: self.pool.fetch(
                VENUES_IN_DISTRICT, district))
        return [VenueOut(**dict(row)) for row in rows]

    async def one(self, venue_id: int) -> VenueOut:
        """One teaching point, or NotFound."""
        row = await self.reads.get(("venue", venue_id), lambda: self.pool.fetchrow(
            SELECT_VENUE, venue_id)) if storable_id(venue_id) else None
        if row is None:
            raise NotFound.of("venue")
        return VenueOut(**dict(row))

    async def districts(self) -> list[str]:
        """The districts that have a teaching point, for a filter's choices."""
        rows = await self.reads.get("districts", lambda: self.pool.fetch(DISTRICTS))
        return [row["district"] for row in rows]


@post("/v1/venues", operation_id="createVenue", tags=["venues"],
      **requires("operator", errors=(413,)))
async def create_venue(data: JSONBody[VenueIn], venues: NamedDependency[Venues]) -> VenueOut:
    """Add a teaching point (operators only). `lat`/`lon` are WGS-84: convert the GCJ-02
    coordinates that AMap (高德) and Tencent maps show (100-700 m off) before sending them."""
    return await venues.create(data)


@get("/v1/venues", operation_id="listVenues", tags=["venues"], responses=documented(400, 503))
async def list_venues(
    venues: NamedDependency[Venues],
    district: Annotated[str | None, Parameter(
        max_length=100, pattern=NO_NUL, description="Only this district's teaching points.")
    ] = None,
) -> list[VenueOut]:
    """All teaching points, or one district's (public)."""
    return await venues.listed(district)


HANDLERS: list[Any] = [create_venue, list_venues]
