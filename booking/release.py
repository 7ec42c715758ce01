"""Publish a release for a rehearsal: venues and courses through the API, one opening time.

Used by `booking release` (for Locust runs) and by `booking bench`. The course ids come back
hottest first: load generators aim most of the crowd at the first tenth.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import httpx

from booking.auth import mint

DISTRICTS = ["Dongcheng", "Xicheng", "Chaoyang", "Haidian", "Fengtai", "Shijingshan"]
CATEGORIES = ["calligraphy", "technology", "music", "culture", "art", "fitness"]


@dataclass(frozen=True, slots=True)
class Release:
    base_url: str
    opens_at: str
    opens_at_epoch: float
    course_ids: list[int]
    seats: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


async def publish_release(base_url: str, secret: str, *, courses: int, seats: int,
                          opens_in_s: float, venues: int = 26) -> Release:
    opens_at = datetime.now(UTC) + timedelta(seconds=opens_in_s)
    headers = {"Authorization": f"Bearer {mint(secret, 'operator', 'release-publisher')}"}
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:

        async def post(path: str, body: dict[str, object]) -> int:
            async with limit:
                answer = await http.post(path, json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.text}")
            return answer.json()["id"]

        venue_ids = await asyncio.gather(*(post("/v1/venues", {
            "name": f"Rehearsal point {n + 1}", "district": DISTRICTS[n % len(DISTRICTS)],
            "address": f"{n + 1} Release Road", "lat": 39.9, "lon": 116.4,
        }) for n in range(min(venues, courses))))
        starts = opens_at + timedelta(days=14)
        course_ids = await asyncio.gather(*(post("/v1/courses", {
            "title": f"Rehearsal class {n + 1}", "category": CATEGORIES[n % len(CATEGORIES)],
            "teacher": f"Teacher {n + 1}", "venue_id": venue_ids[n % len(venue_ids)],
            "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=2)).isoformat(),
            "capacity": seats, "sales_open_at": opens_at.isoformat(),
        }) for n in range(courses)))
    return Release(base_url, opens_at.isoformat(), opens_at.timestamp(), list(course_ids), seats)
