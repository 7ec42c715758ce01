"""Near me: the course list by distance, in `GET /v1/courses` and on the page `/`.

Each test puts its teaching points around a random place of its own (far from the other tests'
venues, which sit in Beijing), at known distances, so what it finds there is only its own.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import OPERATOR, grab, make_course, unique, wait_for

from booking.courses import EARTH_RADIUS_M, CourseQuery, Place, list_sql

CARD = re.compile(r'<article class="card" data-course-id="(\d+)">(.*?)</article>', re.S)
# North, east of the origin in metres: 300 m, 1.5 km, 4 km (all within the default 5 km), 8 km;
# made in another order than their distances, so "soonest first" would show another order.
AROUND = {"far": (-4000, 0), "near": (300, 0), "out": (8000, 0), "mid": (0, 1500)}
BY_DISTANCE = ("near", "mid", "far", "out")


@dataclass(frozen=True)
class Spot:
    venue_id: int
    course_id: int
    place: Place


def somewhere() -> Place:
    """A random place well away from Beijing (39.9, 116.4), where the other tests' venues are."""
    return Place(random.uniform(-60, 30), random.uniform(-170, 170))


def moved(origin: Place, north_m: float, east_m: float) -> Place:
    lat = origin.lat + math.degrees(north_m / EARTH_RADIUS_M)
    lon = origin.lon + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return Place(lat, lon)


def metres(a: Place, b: Place) -> float:
    """Haversine, as the service computes it."""
    h = (math.sin(math.radians(b.lat - a.lat) / 2) ** 2 + math.cos(math.radians(a.lat))
         * math.cos(math.radians(b.lat)) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


async def make_point(http: httpx.AsyncClient, place: Place, district: str) -> dict[str, Any]:
    body = {"name": unique("教学点"), "district": district, "address": unique("路"),
            "lat": place.lat, "lon": place.lon}
    answer = await http.post("/v1/venues", json=body, headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def spots_around(http: httpx.AsyncClient, origin: Place, offsets: dict[str, tuple],
                       district: str | None = None, **course: Any) -> dict[str, Spot]:
    """A teaching point with one course at each offset from `origin`."""
    district = district or unique("district")
    made = {}
    for name, (north, east) in offsets.items():
        venue = await make_point(http, moved(origin, north, east), district)
        created = await make_course(http, capacity=5, venue_id=venue["id"], **course)
        made[name] = Spot(venue["id"], created["id"], Place(venue["lat"], venue["lon"]))
    return made


async def listed(http: httpx.AsyncClient, **query: Any) -> list[dict[str, Any]]:
    answer = await http.get("/v1/courses", params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def near(place: Place, **more: Any) -> dict[str, Any]:
    return {"lat": place.lat, "lon": place.lon, **more}


def cards(html: str) -> list[tuple[int, str]]:
    """The course cards of a list page, in order: (course id, the card's HTML)."""
    return [(int(course_id), body) for course_id, body in CARD.findall(html)]


async def page(http: httpx.AsyncClient, **query: Any) -> str:
    answer = await http.get("/", params=query)
    assert answer.status_code == 200, answer.text
    assert "text/html" in answer.headers["content-type"]
    return answer.text


# --- GET /v1/courses ----------------------------------------------------------------------------

async def test_nearest_first_with_distances(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)

    items = await listed(http, **near(origin))

    assert [c["id"] for c in items] == [spots[n].course_id for n in ("near", "mid", "far")]
    for item, name in zip(items, ("near", "mid", "far"), strict=True):
        assert abs(item["distance_m"] - metres(origin, spots[name].place)) <= 1
        assert item["venue_id"] == spots[name].venue_id
        assert item["venue_name"].startswith("教学点") and item["address"].startswith("路")
    assert [round(c["distance_m"], -2) for c in items] == [300, 1500, 4000]


async def test_km_drops_the_far_ones_and_widens(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)

    within_1 = await listed(http, **near(origin, km=1))
    within_10 = await listed(http, **near(origin, km=10))

    assert [c["id"] for c in within_1] == [spots["near"].course_id]
    assert [c["id"] for c in within_10] == [spots[n].course_id for n in BY_DISTANCE]


async def test_without_a_place_there_is_no_distance(http):
    origin = somewhere()
    spots = await spots_around(http, origin, {"here": (0, 0)})

    (item,) = await listed(http, venue_id=spots["here"].venue_id)

    assert item["distance_m"] is None and item["venue_name"].startswith("教学点")


async def test_a_picked_point_is_its_place(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)
    mid = spots["mid"]

    items = await listed(http, point=mid.venue_id, km=2)

    assert [c["id"] for c in items] == [mid.course_id, spots["near"].course_id]
    assert items[0]["distance_m"] == 0
    assert abs(items[1]["distance_m"] - metres(mid.place, spots["near"].place)) <= 1


def next_monday_utc(at_hour: int, minute: int = 0) -> datetime:
    day = datetime.now(UTC).date() + timedelta(days=14)
    monday = day - timedelta(days=day.weekday())
    return datetime(monday.year, monday.month, monday.day, at_hour, minute, tzinfo=UTC)


async def test_weekday_is_the_day_in_beijing(http):
    venue = await make_point(http, somewhere(), unique("district"))
    monday_late_utc = next_monday_utc(23, 30)  # Tuesday 07:30 in Beijing
    tuesday_utc = monday_late_utc + timedelta(hours=10, minutes=30)  # Tuesday 18:00 in Beijing
    monday_utc = next_monday_utc(10)  # Monday 18:00 in Beijing
    ids = {}
    for name, starts in (("tue_early", monday_late_utc), ("tue", tuesday_utc),
                         ("mon", monday_utc)):
        course = await make_course(http, capacity=5, venue_id=venue["id"],
                                   starts_at=starts.isoformat(),
                                   ends_at=(starts + timedelta(hours=2)).isoformat())
        ids[name] = course["id"]

    async def on(weekday: int) -> list[int]:
        return [c["id"] for c in await listed(http, venue_id=venue["id"], weekday=weekday)]

    assert await on(1) == [ids["mon"]]
    assert await on(2) == [ids["tue_early"], ids["tue"]]
    assert await on(3) == []


@pytest.mark.parametrize(("query", "code"), [
    ("lat=30", "location_incomplete"),
    ("lon=100", "location_incomplete"),
    ("point=999999999999999", "unknown_point"),
    ("lat=30&lon=100&point=1", "location_twice"),
    ("lat=30&lon=100&km=0", "invalid"),
    ("lat=30&lon=100&km=50.5", "invalid"),
    ("lat=91&lon=100", "invalid"),
    ("lat=30&lon=-181", "invalid"),
    ("lat=nan&lon=100", "invalid"),
    ("lat=north&lon=100", "invalid"),
    ("point=0", "invalid"),
    ("weekday=0", "invalid"),
    ("weekday=8", "invalid"),
])
async def test_bad_places_and_days_are_400_with_a_code(http, query, code):
    answer = await http.get(f"/v1/courses?{query}")

    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code and answer.json()["detail"]


async def test_the_box_uses_the_venues_place_index(db):
    """Plain SQL on a btree (lat, lon): the bounding box is an index condition."""
    text, args = list_sql(CourseQuery(km=5), Place(31.23, 121.47))
    async with db.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        try:
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {text}", *args))
        finally:
            await conn.execute("RESET enable_seqscan")
    assert "venues_by_place" in plan, plan


# --- the page / ---------------------------------------------------------------------------------

async def test_page_cards_nearest_first_with_the_distance_in_words(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)

    shown = cards(await page(http, **near(origin)))

    assert [course_id for course_id, _ in shown] == [
        spots[n].course_id for n in ("near", "mid", "far")]
    for (course_id, card), distance in zip(shown, ("约 300 米", "约 1.5 公里", "约 4.0 公里"),
                                           strict=True):
        assert distance in card
        assert "5 个余位" in card and f'href="/courses/{course_id}"' in card


async def test_page_km_1_drops_the_far_ones(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)

    shown = cards(await page(http, **near(origin, km=1)))

    assert [course_id for course_id, _ in shown] == [spots["near"].course_id]


async def test_page_district_lists_its_points_and_a_point_lists_near_it(http):
    origin, district = somewhere(), unique("district")
    spots = await spots_around(http, origin, AROUND, district=district)

    by_district = await page(http, district=district)
    for spot in spots.values():  # each teaching point of the district, as a link
        assert re.search(rf'<a [^>]*href="/\?[^"]*point={spot.venue_id}"', by_district)
    mid = spots["mid"]
    by_point = await page(http, district=district, point=mid.venue_id, km=2)

    assert [course_id for course_id, _ in cards(by_point)] == [
        mid.course_id, spots["near"].course_id]
    assert "约 0 米" in cards(by_point)[0][1] and "约 1.5 公里" in cards(by_point)[1][1]


async def test_page_has_the_near_me_form(http):
    html = await page(http)

    form = html[html.index('<form method="get" action="/"'):]
    form = form[:form.index("</form>")]
    assert re.search(r'<button type="button" data-locate hidden>', form)
    assert '<input type="hidden" name="lat"' in form and '<input type="hidden" name="lon"' in form
    for name in ("district", "category", "weekday", "km"):
        assert f'name="{name}"' in form
    assert 'name="available" value="true"' in form


async def test_page_says_full_in_words_and_can_hide_it(http):
    origin = somewhere()
    spots = await spots_around(http, origin, {"full": (100, 0), "open": (200, 0)})
    course = await make_course(http, capacity=1, venue_id=spots["full"].venue_id)
    assert (await grab(http, course["id"], unique("early"))).status_code == 201

    shown = dict(cards(await page(http, **near(origin, km=1))))
    assert "已满" in shown[course["id"]] and "5 个余位" in shown[spots["open"].course_id]

    async def full_one_hidden() -> bool:
        ids = [i for i, _ in cards(await page(http, **near(origin, km=1), available="true"))]
        return course["id"] not in ids and spots["open"].course_id in ids

    await wait_for(full_one_hidden)


async def test_page_turns_pages_and_says_when_nothing_is_near(http):
    origin = somewhere()
    venue = await make_point(http, origin, unique("district"))
    made = [(await make_course(http, capacity=5, venue_id=venue["id"]))["id"] for _ in range(21)]

    first = await page(http, **near(origin, km=1))
    assert len(cards(first)) == 20 and "下一页" in first and "上一页" not in first
    next_link = re.search(r'<a href="(/\?[^"]*offset=20[^"]*)" rel="next">', first)
    second = await page(http, **dict(httpx.URL(next_link[1].replace("&amp;", "&")).params))
    assert "上一页" in second and "下一页" not in second
    assert sorted(i for i, _ in cards(first) + cards(second)) == sorted(made)

    nothing = await page(http, **near(somewhere(), km=0.1))
    assert cards(nothing) == [] and "没有符合条件的课程" in nothing


async def test_page_bad_values_are_said_beside_their_fields(http):
    origin = somewhere()
    await spots_around(http, origin, {"here": (0, 0)})

    html = await page(http, km="far", weekday="9", lat=str(origin.lat), point="none")

    for field_error in ("km-error", "weekday-error", "near-error", "point-error"):
        assert f'class="field-error" id="{field_error}"' in html
    assert cards(html)  # the list is still there, without the values it could not use


async def test_page_unknown_point_is_said_not_an_error_page(http):
    html = await page(http, point="999999999999999")

    assert 'id="point-error"' in html and "找不到这个教学点" in html


async def test_page_in_english(http):
    origin = somewhere()
    spots = await spots_around(http, origin, AROUND)

    answer = await http.get("/", params=near(origin, km=1, lang="en"))

    assert answer.status_code == 200
    assert '<html lang="en"' in answer.text
    assert [i for i, _ in cards(answer.text)] == [spots["near"].course_id]
