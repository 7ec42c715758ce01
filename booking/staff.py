"""Venue staff: phones an operator links to a venue, whose owners sign in as that venue.

A phone belongs to at most one venue (`venue_staff.phone` is the key). Anyone may ask for a
sign-in code; only the token decides: `POST /v1/auth/tokens` with `role: venue` (and
`/venue/login`) gives a venue token to a linked phone only (see `booking.signin`).

Unlinking a phone stops its next sign-in, not the tokens it already holds: a token is checked by
its signature alone and lasts 30 days (rotate BOOKING_SECRET to end them all at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter

from booking.core.auth import Principal, requires
from booking.core.errors import Conflict, Forbidden, NotFound
from booking.core.fields import storable_id
from booking.signin import MOBILE, clean_phone, invalid_phone

# Links `phone` to the venue, or finds it linked there already (a no-op update, so the row comes
# back); linked to another venue, no row comes back. One statement: no race between the two.
LINK = """
INSERT INTO venue_staff AS s (phone, venue_id) VALUES ($1, $2)
ON CONFLICT (phone) DO UPDATE SET venue_id = s.venue_id WHERE s.venue_id = EXCLUDED.venue_id
RETURNING (xmax = 0) AS created
"""
VENUE_OF = "SELECT venue_id FROM venue_staff WHERE phone = $1"
UNLINK = "DELETE FROM venue_staff WHERE phone = $1 AND venue_id = $2 RETURNING phone"
VENUE_EXISTS = "SELECT EXISTS (SELECT 1 FROM venues WHERE id = $1)"
STAFF_OF = """
SELECT phone, created_at FROM venue_staff WHERE venue_id = $1 ORDER BY created_at, phone
LIMIT 1000
"""


def masked(phone: str) -> str:
    """A phone as rosters show it: 138****0001."""
    return f"{phone[:3]}****{phone[-4:]}"


class StaffIn(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(
        max_length=40, description="The staff member's 11-digit mainland mobile number",
        examples=["13912345678"])]


class StaffOut(msgspec.Struct):
    venue_id: int
    phone: str


class StaffMember(msgspec.Struct):
    phone: str  # masked: 138****0001
    linked_at: datetime


@dataclass(frozen=True, slots=True)
class Linked:
    venue_id: int
    phone: str
    created: bool  # False: it was linked to this venue already


class Staff:
    """The staff domain's service: who may sign in as which venue."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def link(self, venue_id: int, phone: str) -> Linked:
        """Link a phone to a venue; raises `invalid_phone`, NotFound (no such venue) or
        `staff_elsewhere` (linked to another venue: unlink it there first)."""
        phone = _valid_phone(phone)
        if not storable_id(venue_id):
            raise NotFound.of("venue")
        elsewhere = None
        for _ in range(3):  # again only if the other link went away between the two reads
            try:
                row = await self.pool.fetchrow(LINK, phone, venue_id)
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound.of("venue") from exc
            if row is not None:
                return Linked(venue_id, phone, row["created"])
            elsewhere = await self.pool.fetchval(VENUE_OF, phone)
            if elsewhere is not None:
                break
        raise Conflict(f"This phone is staff of venue {elsewhere}; unlink it there first "
                       "(a phone works for one venue).", code="staff_elsewhere",
                       extra={"venue_id": elsewhere})

    async def unlink(self, venue_id: int, phone: str) -> Linked:
        """Unlink a phone from a venue (its tokens already issued stay good until they
        expire); NotFound when it is not linked there."""
        phone = _valid_phone(phone)
        if not storable_id(venue_id) or await self.pool.fetchval(UNLINK, phone,
                                                                 venue_id) is None:
            raise NotFound("This phone is not staff of that venue.")
        return Linked(venue_id, phone, created=False)

    async def of_venue(self, venue_id: int) -> list[StaffMember]:
        """A venue's staff, phones masked; NotFound for no such venue."""
        if not storable_id(venue_id) or not await self.pool.fetchval(VENUE_EXISTS, venue_id):
            raise NotFound.of("venue")
        rows = await self.pool.fetch(STAFF_OF, venue_id)
        return [StaffMember(masked(row["phone"]), row["created_at"]) for row in rows]


def _valid_phone(phone: str) -> str:
    phone = clean_phone(phone)
    if not MOBILE.fullmatch(phone):
        raise invalid_phone()
    return phone


# --- /v1 --------------------------------------------------------------------------------------

Caller = Request[Principal, Any, State]
VenueId = Annotated[int, Parameter(description="Venue id")]


@post("/v1/venues/{venue_id:int}/staff", operation_id="linkStaff", tags=["staff"],
      status_code=201, **requires("operator", errors=(404, 409, 413), also={
          200: ResponseSpec(StaffOut, description="The phone was linked to this venue already")}))
async def link_staff(venue_id: VenueId, data: JSONBody[StaffIn],
                     staff: NamedDependency[Staff]) -> Response[StaffOut]:
    """Link a staff phone to a venue (operators only): its owner may then sign in as the venue.
    201 when new, 200 when linked here already, 409 `staff_elsewhere` when another venue's."""
    linked = await staff.link(venue_id, data.phone)
    return Response(StaffOut(linked.venue_id, linked.phone),
                    status_code=201 if linked.created else 200)


@delete("/v1/venues/{venue_id:int}/staff/{phone:str}", operation_id="unlinkStaff",
        tags=["staff"], status_code=200, **requires("operator", errors=(404,)))
async def unlink_staff(venue_id: VenueId, phone: FromPath[str],
                       staff: NamedDependency[Staff]) -> StaffOut:
    """Unlink a staff phone (operators only): no new venue token for it. Tokens it already holds
    stay good until they expire (30 days)."""
    linked = await staff.unlink(venue_id, phone)
    return StaffOut(linked.venue_id, linked.phone)


@get("/v1/venues/{venue_id:int}/staff", operation_id="listStaff", tags=["staff"],
     **requires("operator", "venue", errors=(404,)))
async def list_staff(request: Caller, venue_id: VenueId,
                     staff: NamedDependency[Staff]) -> list[StaffMember]:
    """A venue's staff phones, masked (an operator, or that venue)."""
    if request.user.role == "venue" and request.user.venue_id != venue_id:
        raise Forbidden("A venue sees only its own staff.")
    return await staff.of_venue(venue_id)


HANDLERS: list[Any] = [link_staff, unlink_staff, list_staff]
