"""Venues: the teaching points that publish courses."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import get, post
from litestar.di import NamedDependency

from booking.core.auth import requires
from booking.core.errors import documented
from booking.core.fields import NO_NUL

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class VenueIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    district: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL)]
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=NO_NUL)]
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


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


@post("/v1/venues", operation_id="createVenue", tags=["venues"],
      **requires("operator", errors=(413,)))
async def create_venue(data: VenueIn, pool: NamedDependency[asyncpg.Pool]) -> VenueOut:
    """Add a teaching point (operators only)."""
    row = await pool.fetchrow(INSERT_VENUE, data.name, data.district, data.address,
                                data.lat, data.lon)
    return VenueOut(**dict(row))


@get("/v1/venues", operation_id="listVenues", tags=["venues"], responses=documented(503))
async def list_venues(pool: NamedDependency[asyncpg.Pool]) -> list[VenueOut]:
    """All teaching points (public)."""
    rows = await pool.fetch(LIST_VENUES)
    return [VenueOut(**dict(row)) for row in rows]


HANDLERS: list[Any] = [create_venue, list_venues]
