"""The grab's fast path (booking/fast_grab.py) answers exactly as Litestar's handler would.

A canonical grab (`/v1/courses/5/bookings`) takes the fast path; the same grab written with a
leading zero (`/v1/courses/05/bookings`) is routed by Litestar to `grab_seat`. Each test asks
both ways in the same situation and compares what a client sees: status, body and headers.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from conftest import (
    SECRET,
    auth,
    grab,
    make_course,
    resident,
    unique,
)

from booking.app import create_app
from booking.core.settings import Settings
from booking.core.stores import open_redis
from booking.fast_grab import course_of
from booking.ops.rehearsal import address_of

# Headers whose values may differ between two answers (a clock, a length of other ids, a wait).
VARYING = {"date", "content-length", "retry-after", "x-request-id"}


def scope(path: str, method: str = "POST", **extra: object) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "headers": [], **extra}


@pytest.mark.parametrize("path", ["/v1/courses/5/bookings", "/v1/courses/123456789012/bookings"])
def test_a_canonical_grab_path_names_its_course(path):
    assert course_of(scope(path)) == int(path.split("/")[3])


@pytest.mark.parametrize("path, method", [
    ("/v1/courses/05/bookings", "POST"),  # a leading zero: Litestar's form
    ("/v1/courses/0/bookings", "POST"),
    ("/v1/courses/-1/bookings", "POST"),
    ("/v1/courses/+1/bookings", "POST"),
    ("/v1/courses/1 /bookings", "POST"),
    ("/v1/courses/\u0663/bookings", "POST"),  # a digit, but not an ASCII one
    ("/v1/courses/1234567890123456789/bookings", "POST"),  # longer than any id
    ("/v1/courses//bookings", "POST"),
    ("/v1/courses/5/bookings/", "POST"),
    ("/v1/courses/5/bookings", "GET"),  # the roster
    ("/v1/courses/5/waitlist", "POST"),
])
def test_anything_else_is_left_to_litestar(path, method):
    assert course_of(scope(path, method)) is None


def test_a_mounted_app_is_left_to_litestar():
    assert course_of(scope("/v1/courses/5/bookings", root_path="/booking")) is None


async def both_ways(http: httpx.AsyncClient, course_id: int, who: str,
                    headers: dict[str, str] | None = None) -> tuple[httpx.Response, ...]:
    """The same resident's grab, first by the fast path, then by Litestar's route."""
    headers = headers if headers is not None else {**resident(who),
                                                   "X-Forwarded-For": address_of(who)}
    fast = await http.post(f"/v1/courses/{course_id}/bookings", headers=headers)
    routed = await http.post(f"/v1/courses/0{course_id}/bookings", headers=headers)
    return fast, routed


def assert_alike(fast: httpx.Response, routed: httpx.Response, same_body: bool = True) -> None:
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert set(fast.headers) == set(routed.headers)
    for name in set(fast.headers) - VARYING:
        assert fast.headers[name] == routed.headers[name], name
    if same_body:
        assert fast.content == routed.content
    else:
        assert set(fast.json()) == set(routed.json())


async def test_the_same_booking_again_is_answered_alike(http):
    course = await make_course(http, capacity=5)
    who = unique("twice")
    first = await grab(http, course["id"], who)
    assert first.status_code == 201
    fast, routed = await both_ways(http, course["id"], who)
    assert_alike(fast, routed)
    assert fast.status_code == 200 and fast.json() == first.json()


async def test_new_bookings_are_answered_alike(http):
    course = await make_course(http, capacity=5)
    fast = await grab(http, course["id"], unique("fast"))
    who = unique("routed")
    routed = await http.post(f"/v1/courses/0{course['id']}/bookings",
                             headers={**resident(who), "X-Forwarded-For": address_of(who)})
    assert_alike(fast, routed, same_body=False)
    assert fast.status_code == 201 and fast.json()["status"] == routed.json()["status"]


async def test_refusals_are_answered_alike(http):
    sold_out = await make_course(http, capacity=1)
    assert (await grab(http, sold_out["id"], unique("holder"))).status_code == 201
    not_open = await make_course(http, capacity=1, opens_in_s=3600)
    for course_id, code in ((sold_out["id"], "sold_out"), (not_open["id"], "not_open"),
                            (987654321098, "not_found")):
        fast, routed = await both_ways(http, course_id, unique("refused"))
        assert_alike(fast, routed)
        assert fast.json()["code"] == code


async def test_the_request_id_comes_back_on_the_fast_path(http):
    course = await make_course(http, capacity=1)
    who = unique("rid")
    headers = {**resident(who), "X-Request-Id": "resident-7.1"}
    answer = await http.post(f"/v1/courses/{course['id']}/bookings", headers=headers)
    assert answer.status_code == 201 and answer.headers["x-request-id"] == "resident-7.1"


async def test_strangers_and_venues_are_told_first(http):
    course = await make_course(http, capacity=1)
    for headers, status in (({}, 401), ({"Authorization": "Bearer forged"}, 401),
                            (auth("venue", "v", venue_id=course["venue_id"]), 403)):
        fast, routed = await both_ways(http, course["id"], "-", headers)
        assert_alike(fast, routed)
        assert fast.status_code == status
    assert (await grab(http, course["id"], unique("after"))).status_code == 201  # nothing taken


async def test_a_store_that_fails_is_answered_alike(stores, db):
    """With Redis gone the gate fails: both ways answer the handler table's 503."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    settings = Settings(database_url=stores.database_url, redis_url=dead, secret=SECRET,
                        payment_secret="p" * 40)
    redis = open_redis(dead)
    app = create_app(settings, pool=db, redis=redis, background=False)
    who = unique("down")
    headers = {**resident(who), "X-Forwarded-For": address_of(who)}
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                 base_url="http://worker") as client:
        fast, routed = await both_ways(client, 1, who, headers)
    await redis.aclose()
    assert_alike(fast, routed)
    assert fast.status_code == 503 and fast.json()["code"] == "unavailable"
