"""What a page shows, set up through the JSON API as the operator and residents would.

Synchronous on purpose: the browser tests are sync tests (see conftest.py), and the figure
printer is a plain script. The data is Chinese, as a city's night school's is, so an English
page shows what it does with Chinese names.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from booking.core.auth import mint
from booking.ops.rehearsal import address_of

# Where the test venues stand (Beijing, Chaoyang), and a point 300 m away to look from.
VENUE_AT = (39.9219, 116.4435)
NEAR = (39.9246, 116.4447)
# The Chinese of the data these tests create (each name also gets a tag): the only Chinese an
# English page may show without marking it as data.
VENUE, DISTRICT, ADDRESS = "朝阳区文化馆", "朝阳区", "朝阳北路 101 号"
TITLE, CATEGORY, TEACHER, ABOUT = "书法入门", "书法", "李老师", "从握笔开始，一笔一画地练。"
DATA_WORDS = (VENUE, DISTRICT, ADDRESS, TITLE, CATEGORY, TEACHER, ABOUT)


# the venue's desk (issue 12) --------------------------------------------------------------

STAFF_PREFIX = "staff@"  # `Api.staff(venue_id)`'s names: `token()` mints a venue token for them


def lesson_now_fields(minutes_ahead: int = 5) -> dict[str, Any]:
    """A one-lesson course that starts `minutes_ahead` from now (check-in opens 60 minutes
    before a lesson), on sale since a minute ago."""
    now = datetime.now(UTC).replace(microsecond=0)
    starts = now + timedelta(minutes=minutes_ahead)
    return {"starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=2)).isoformat(),
            "sales_open_at": (now - timedelta(minutes=1)).isoformat(), "lessons": 1}


def tag() -> str:
    """A short random tag that makes names unique across tests and runs."""
    return secrets.token_hex(3)


class Api:
    """A client of one running service, holding the secret that signs its tokens."""

    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url
        self.secret = secret
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.operator = {"Authorization": f"Bearer {mint(secret, 'operator', 'ops')}"}

    def close(self) -> None:
        self.http.close()

    def _created(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body, headers=self.operator)
        assert response.status_code == 201, f"POST {path}: {response.status_code} {response.text}"
        return response.json()

    def venue(self, **fields: Any) -> dict[str, Any]:
        lat, lon = VENUE_AT
        return self._created("/v1/venues", {
            "name": f"{VENUE} {tag()}", "district": DISTRICT, "address": ADDRESS,
            "lat": lat, "lon": lon, **fields})

    def course(self, *, capacity: int = 20, opens_in_s: float = -60, venue_id: int | None = None,
               **fields: Any) -> dict[str, Any]:
        """A published course a week from now; its sales opened a minute ago by default."""
        now = datetime.now(UTC)
        starts = (now + timedelta(days=7)).replace(hour=11, minute=0, second=0, microsecond=0)
        return self._created("/v1/courses", {
            "title": f"{TITLE} {tag()}", "category": CATEGORY, "teacher": TEACHER,
            "description": ABOUT,
            "starts_at": starts.isoformat(), "ends_at": (starts + timedelta(hours=2)).isoformat(),
            "capacity": capacity,
            "sales_open_at": (now + timedelta(seconds=opens_in_s)).isoformat(),
            "venue_id": venue_id or self.venue()["id"], **fields})

    def resident(self) -> str:
        return f"senior-{tag()}"

    def token(self, resident: str) -> str:
        """The sign-in cookie's value: the same JWT the API takes as Bearer (a `venue` token
        for a name of `staff(venue_id)`)."""
        if resident.startswith(STAFF_PREFIX):
            return mint(self.secret, "venue", "staff-x",
                        venue_id=int(resident.removeprefix(STAFF_PREFIX)))
        return mint(self.secret, "resident", resident)

    def _as(self, resident: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(resident)}",
                "X-Forwarded-For": address_of(resident)}

    def grab(self, course_id: int, resident: str) -> dict[str, Any]:
        """A seat (a hold for a paid course); fails the caller when there is none."""
        response = self.http.post(f"/v1/courses/{course_id}/bookings", headers=self._as(resident))
        assert response.status_code == 201, f"grab {course_id}: {response.text}"
        return response.json()

    def join_waitlist(self, course_id: int, resident: str) -> dict[str, Any]:
        response = self.http.post(f"/v1/courses/{course_id}/waitlist",
                                  headers=self._as(resident))
        assert response.status_code in (200, 201), f"waitlist {course_id}: {response.text}"
        return response.json()

    # the venue's desk: staff of a venue, check-ins (issue 12)

    def staff(self, venue_id: int) -> str:
        """A signed-in name for `Visit.resident`: staff of `venue_id`."""
        return f"{STAFF_PREFIX}{venue_id}"

    def as_staff(self, venue_id: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(self.staff(venue_id))}"}

    def link_staff(self, venue_id: int, phone: str) -> dict[str, Any]:
        return self._created(f"/v1/venues/{venue_id}/staff", {"phone": phone})

    def lesson_now(self, venue_id: int, **fields: Any) -> dict[str, Any]:
        """A course of `venue_id` whose one lesson starts in a few minutes."""
        return self.course(venue_id=venue_id, **{**lesson_now_fields(), **fields})

    def checkin_of(self, booking_id: str, resident: str) -> dict[str, Any]:
        """`GET /v1/bookings/{id}/checkin` as its resident: `{token, code, ...}`."""
        answer = self.http.get(f"/v1/bookings/{booking_id}/checkin", headers=self._as(resident))
        assert answer.status_code == 200, f"checkin of {booking_id}: {answer.text}"
        return answer.json()

    def check_in(self, venue_id: int, **token_or_code: str) -> httpx.Response:
        """`POST /v1/checkins {token}` or `{code}` as staff of `venue_id`."""
        return self.http.post("/v1/checkins", json=token_or_code,
                              headers=self.as_staff(venue_id))

    def attended(self, venue_id: int) -> tuple[str, dict[str, Any]]:
        """A resident checked in to a lesson at `venue_id` that is on now: (resident, course)."""
        me = self.resident()
        course = self.lesson_now(venue_id)
        booking = self.grab(course["id"], me)
        checked = self.check_in(venue_id, token=self.checkin_of(booking["id"], me)["token"])
        assert checked.status_code == 201, f"check in: {checked.status_code} {checked.text}"
        return me, course

    def sold_out(self, **fields: Any) -> dict[str, Any]:
        """A one-seat course whose seat someone else took."""
        course = self.course(capacity=1, **fields)
        self.grab(course["id"], self.resident())
        return course


def mobile() -> str:
    """A fresh 11-digit mainland mobile number (one code per phone per minute)."""
    return "139" + str(secrets.randbelow(10**8)).zfill(8)
