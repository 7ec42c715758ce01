"""Publish a release for a rehearsal: venues and courses through the API, one opening time.

Used by `booking release` (for Locust runs), `booking bench` and the fault lab. The course ids
come back hottest first: load generators aim most of the crowd at the first tenth (`hot`). With
`paid_share`, that share of the courses has a price, spread evenly over the list (the hottest
course first), so holds, payments and the waitlist of a sold-out paid course are rehearsed too.
`load_release` reads back the JSON file `booking release --out` writes. `address_of` gives each
simulated resident a client address of its own, as their phones would have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from booking.core.auth import mint
from booking.core.settings import ConfigError, Settings

DISTRICTS = ["Dongcheng", "Xicheng", "Chaoyang", "Haidian", "Fengtai", "Shijingshan"]
CATEGORIES = ["calligraphy", "technology", "music", "culture", "art", "fitness"]
PRICE_CENTS = 2500
HOLD_MINUTES = 10


@dataclass(frozen=True, slots=True)
class Release:
    base_url: str
    opens_at: str
    opens_at_epoch: float
    course_ids: list[int]
    seats: int
    paid_course_ids: list[int] = field(default_factory=list)  # a grab of one gives a hold
    price_cents: int = 0  # the price of each paid course

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def price(self, course_id: int) -> int:
        """The price of a course in cents; 0 for a free one (a grab confirms at once)."""
        return self.price_cents if course_id in self.paid_course_ids else 0

    @property
    def hot(self) -> list[int]:
        """The hottest tenth of the courses (at least one), where most of a crowd aims."""
        return self.course_ids[:self._hot_count]

    @property
    def cold(self) -> list[int]:
        return self.course_ids[self._hot_count:]

    @property
    def _hot_count(self) -> int:
        return max(1, len(self.course_ids) // 10)


class ReleaseFileError(ValueError):
    """A release file that cannot be used; the message says which and why."""


def load_release(path: Path) -> Release:
    """The release `booking release --out` wrote to `path`."""
    try:
        data = json.loads(path.read_text())
        opens_at_epoch = float(data["opens_at_epoch"])
        release = Release(
            str(data["base_url"]),
            str(data.get("opens_at") or datetime.fromtimestamp(opens_at_epoch, UTC).isoformat()),
            opens_at_epoch, [int(course_id) for course_id in data["course_ids"]],
            int(data.get("seats") or 0),
            [int(course_id) for course_id in data.get("paid_course_ids") or []],
            int(data.get("price_cents") or 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReleaseFileError(f"cannot read the release {path} ({exc}); write one with "
                               "`booking release --out FILE`") from exc
    if not release.course_ids:
        raise ReleaseFileError(f"the release {path} has no courses")
    if release.paid_course_ids and release.price_cents < 1:
        raise ReleaseFileError(f"the release {path} has paid courses but no price_cents")
    return release


def address_of(who: str) -> str:
    """A client address of a resident's own (the same every time), for `X-Forwarded-For`:
    residents come from many addresses, as they would from their own phones."""
    n = zlib.crc32(who.encode())
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def is_paid(n: int, paid_share: float) -> bool:
    """Whether course n (0 = hottest) is paid: share s makes every (1/s)-th course paid,
    starting with the hottest, so hot and cold courses both get their share."""
    def paid_before(k: int) -> int:
        return math.ceil(round(k * paid_share, 9))  # round: 0.7 * 10 is not quite 7

    return paid_before(n + 1) > paid_before(n)


async def publish_release(base_url: str, secret: str, *, courses: int, seats: int,
                          opens_in_s: float, venues: int = 26, paid_share: float = 0.0,
                          price_cents: int = PRICE_CENTS,
                          hold_minutes: int = HOLD_MINUTES) -> Release:
    if not (0.0 <= paid_share <= 1.0 and price_cents >= 1):
        raise ValueError("paid_share must be 0-1 and price_cents at least 1")
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

        def price(n: int) -> dict[str, object]:
            if not is_paid(n, paid_share):
                return {}
            return {"price_cents": price_cents, "hold_minutes": hold_minutes}

        venue_ids = await asyncio.gather(*(post("/v1/venues", {
            "name": f"Rehearsal point {n + 1}", "district": DISTRICTS[n % len(DISTRICTS)],
            "address": f"{n + 1} Release Road", "lat": 39.9, "lon": 116.4,
        }) for n in range(min(venues, courses))))
        starts = opens_at + timedelta(days=14)
        course_ids = await asyncio.gather(*(post("/v1/courses", {
            "title": f"Rehearsal class {n + 1}", "category": CATEGORIES[n % len(CATEGORIES)],
            "teacher": f"Teacher {n + 1}", "venue_id": venue_ids[n % len(venue_ids)],
            "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=2)).isoformat(),
            "capacity": seats, "sales_open_at": opens_at.isoformat(), **price(n),
        }) for n in range(courses)))
    paid = [course_id for n, course_id in enumerate(course_ids) if is_paid(n, paid_share)]
    return Release(base_url, opens_at.isoformat(), opens_at.timestamp(), list(course_ids), seats,
                   paid, price_cents if paid else 0)


def run(args: argparse.Namespace) -> int:
    """`booking release`: publish through the API and write the release as JSON."""
    if not (1 <= args.courses <= 100_000 and 1 <= args.seats <= 10_000):
        raise ConfigError("--courses must be 1-100000 and --seats 1-10000.")
    if not (0 <= args.paid_share <= 1 and 1 <= args.hold_minutes <= 1440):
        raise ConfigError("--paid-share must be 0-1 and --hold-minutes 1-1440.")
    settings = Settings.from_env()
    release = asyncio.run(publish_release(args.url, settings.secret, courses=args.courses,
                                          seats=args.seats, opens_in_s=args.opens_in,
                                          paid_share=args.paid_share,
                                          hold_minutes=args.hold_minutes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(release.to_dict(), indent=1))
    print(f"Published {args.courses} courses x {args.seats} seats, opening at "
          f"{release.opens_at}; written to {out}.")
    return 0
