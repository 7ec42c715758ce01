"""A demo term: 26 teaching points, 60 courses, a few very hot ones, sales opening soon.

`booking serve --demo` loads it (`load_demo`), prints how to try it (`print_demo`) and lets a
simulated crowd rush the hot courses at the opening (`start_crowd`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from booking.core.settings import Settings

DISTRICTS = ["东城 Dongcheng", "西城 Xicheng", "朝阳 Chaoyang", "海淀 Haidian",
             "丰台 Fengtai", "石景山 Shijingshan"]
# Each district's centre in WGS-84 (as a phone's GPS reports it); teaching points lie near it.
CENTRES = {"东城 Dongcheng": (39.9288, 116.4160), "西城 Xicheng": (39.9123, 116.3660),
           "朝阳 Chaoyang": (39.9215, 116.4434), "海淀 Haidian": (39.9593, 116.2981),
           "丰台 Fengtai": (39.8585, 116.2870), "石景山 Shijingshan": (39.9056, 116.2229)}
SPREAD_DEG = 0.015  # about 1.5 km around the centre
CLASSES = [
    ("书法入门 Calligraphy for beginners", "calligraphy"),
    ("AI 入门 AI for beginners", "technology"),
    ("民谣吉他 Folk guitar", "music"),
    ("茶艺 Tea art", "culture"),
    ("智能手机课 Smartphone basics", "technology"),
    ("国画 Chinese painting", "art"),
    ("太极拳 Tai chi", "fitness"),
    ("摄影 Photography", "art"),
    ("英语口语 Spoken English", "language"),
    ("烘焙 Baking", "cooking"),
]
HOT_COURSES = 6
HOT_SEATS = 20
PAID_EVERY = 5  # every fifth of the other courses is paid: a grab holds the seat until paid
PRICE_CENTS = 3800
SAMPLE_TERM = Path(__file__).with_name("sample_term.csv")  # a dozen courses of a spring term
STAFF_PHONE = "13800000002"  # signs in at /venue/login as the first teaching point's staff


@dataclass(frozen=True, slots=True)
class DemoTerm:
    venues: int
    courses: int
    hot_course_ids: list[int]
    opens_at: datetime
    paid_course_id: int | None
    loaded: bool  # False when the database already had data and was left as it was
    staff_venue_id: int | None = None  # the venue STAFF_PHONE is linked to, if any


async def load_demo(conn: asyncpg.Connection, opens_in_s: float = 60,
                    venues: int = 26, courses: int = 60) -> DemoTerm:
    """Load the demo term into an empty database; leave a database with venues alone."""
    opens_at = datetime.now(UTC) + timedelta(seconds=opens_in_s)
    if await conn.fetchval("SELECT count(*) FROM venues"):
        hot = await conn.fetch("SELECT id FROM courses WHERE capacity = $1 ORDER BY id LIMIT $2",
                               HOT_SEATS, HOT_COURSES)
        paid = await conn.fetchval("SELECT min(id) FROM courses WHERE price_cents > 0")
        staff_venue = await conn.fetchval("SELECT venue_id FROM venue_staff WHERE phone = $1",
                                          STAFF_PHONE)
        return DemoTerm(0, 0, [r["id"] for r in hot], opens_at, paid, loaded=False,
                        staff_venue_id=staff_venue)
    rng = random.Random(2026)
    async with conn.transaction():
        venue_ids = []
        for i in range(venues):
            district = DISTRICTS[i % len(DISTRICTS)]
            venue_ids.append(await conn.fetchval(
                "INSERT INTO venues (name, district, address, lat, lon) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING id",
                f"教学点 {i + 1} Teaching point {i + 1}", district,
                f"{district.split()[1]} Road {10 + i}",
                CENTRES[district][0] + rng.uniform(-SPREAD_DEG, SPREAD_DEG),
                CENTRES[district][1] + rng.uniform(-SPREAD_DEG, SPREAD_DEG)))
        await conn.execute("INSERT INTO venue_staff (phone, venue_id) VALUES ($1, $2) "
                           "ON CONFLICT (phone) DO NOTHING", STAFF_PHONE, venue_ids[0])
        course_ids = []
        for i in range(courses):
            title, category = CLASSES[i % len(CLASSES)]
            starts = opens_at + timedelta(days=7 + i % 14, hours=11)
            capacity = HOT_SEATS if i < HOT_COURSES else rng.choice([25, 30, 40])
            price = PRICE_CENTS if i >= HOT_COURSES and i % PAID_EVERY == 0 else 0
            course_ids.append(await conn.fetchval(
                "INSERT INTO courses (venue_id, title, category, teacher, description, "
                "starts_at, ends_at, capacity, price_cents, sales_open_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                venue_ids[i % len(venue_ids)], title, category, f"Teacher {i + 1}",
                "An evening class of the city night school.", starts,
                starts + timedelta(hours=2), capacity, price, opens_at))
    paid = course_ids[HOT_COURSES + (-HOT_COURSES) % PAID_EVERY]
    return DemoTerm(venues, courses, course_ids[:HOT_COURSES], opens_at, paid, loaded=True,
                    staff_venue_id=venue_ids[0])


async def run_crowd(base_url: str, secret: str, term: DemoTerm, residents: int) -> None:
    """At the opening, `residents` simulated people rush the hot courses; print what happens.

    Each tries the hot courses in a random order and moves on when told sold_out, the way
    people do on release day. Prints live seat counts until the hot courses are gone."""
    import asyncio
    import time

    import httpx

    from booking.core.auth import mint

    rng = random.Random(7)
    # httpx slows down sharply with hundreds of pooled connections; a few dozen keep it quick.
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http, \
            httpx.AsyncClient(base_url=base_url, timeout=30) as watcher:
        await asyncio.sleep(max(0.0, (term.opens_at - datetime.now(UTC)).total_seconds()))
        print(f"[demo] Sales are open: {residents} residents rush {len(term.hot_course_ids)} "
              "hot courses.", flush=True)
        outcomes: dict[str, int] = {}

        async def person(n: int) -> None:
            headers = {"Authorization": f"Bearer {mint(secret, 'resident', f'crowd-{n}')}"}
            for course_id in rng.sample(term.hot_course_ids, len(term.hot_course_ids)):
                answer = await http.post(f"/v1/courses/{course_id}/bookings", headers=headers)
                code = str(answer.status_code) if answer.status_code < 300 else \
                    answer.json().get("code", str(answer.status_code))
                outcomes[code] = outcomes.get(code, 0) + 1
                if code != "sold_out":
                    return

        started = time.monotonic()
        rush = asyncio.gather(*(person(n) for n in range(residents)))
        shown: list[int] = []
        while not rush.done():
            await asyncio.sleep(0.25)
            left = [(await watcher.get(f"/v1/courses/{c}")).json()["seats_left"]
                    for c in term.hot_course_ids]
            if left != shown:
                print(f"[demo] {time.monotonic() - started:5.1f} s  seats left on hot courses: "
                      f"{left}", flush=True)
                shown = left
        await rush
        left = [(await http.get(f"/v1/courses/{c}")).json()["seats_left"]
                for c in term.hot_course_ids]
        print(f"[demo] Rush over in {time.monotonic() - started:.1f} s. Answers: {outcomes}; "
              f"{HOT_SEATS * len(term.hot_course_ids)} hot seats, seats left now {left}.",
              flush=True)


def start_crowd(settings: Settings, term: DemoTerm, residents: int) -> None:
    """The demo's crowd runs beside the server, in a thread of its own."""
    import asyncio
    import threading

    base = f"http://127.0.0.1:{settings.port}"
    threading.Thread(target=lambda: asyncio.run(run_crowd(base, settings.secret, term, residents)),
                     name="demo-crowd", daemon=True).start()


def print_demo(settings: Settings, term: DemoTerm) -> None:
    """The start-up text of a demo: a resident token and the curl lines to grab a seat, the
    pages' address and a phone to sign in with."""
    from booking.core.auth import mint

    base = f"http://{settings.host}:{settings.port}"
    resident = mint(settings.secret, "resident", "demo-resident-1")
    hot = term.hot_course_ids[0] if term.hot_course_ids else 1
    paid = term.paid_course_id or hot
    state = "loaded" if term.loaded else "already present, kept as it was"
    phone = "13800000001"  # any mainland mobile number works; this one is easy to type
    sign_in = (f"Demo phone {phone}: its six-digit code appears in this log, on a line holding "
               f"`login_code phone_last4={phone[-4:]} code=...`."
               if settings.login_codes == "log" else
               f"Demo phone {phone}: its code leaves through the outbox (kind login_code) to "
               "BOOKING_WEBHOOK_URL; BOOKING_LOGIN_CODES=log shows codes in this log instead.")
    staff = _staff_lines(settings, term, base)
    print(f"""
Demo term {state}. Sales open at {term.opens_at:%H:%M:%S} UTC (hot courses: {term.hot_course_ids}).
  export TOKEN={resident}
  curl -s {base}/v1/courses?available=true
  curl -s {base}/v1/courses/{hot}
  curl -s -X POST {base}/v1/courses/{hot}/bookings -H "Authorization: Bearer $TOKEN"
  curl -s {base}/v1/me/bookings -H "Authorization: Bearer $TOKEN"
Once the hot course is sold out, wait for a seat (a cancelled one comes to you by itself):
  curl -s -X POST {base}/v1/courses/{hot}/waitlist -H "Authorization: Bearer $TOKEN"
A paid course (course {paid}) holds your seat for 10 minutes; play the payment provider:
  curl -s -X POST {base}/v1/courses/{paid}/bookings -H "Authorization: Bearer $TOKEN"
  booking pay --url {base} <booking id from that answer>
More tokens: booking token resident <id> | booking token venue <venue id> | booking token operator

Pages for residents: {base}/  (sign in at {base}/login)
  {sign_in}
  By API: curl -s -X POST {base}/v1/auth/codes -d '{{"phone": "{phone}"}}'
          curl -s -X POST {base}/v1/auth/tokens -d '{{"phone": "{phone}", "code": "<code>"}}'
{staff}""", flush=True)


def _staff_lines(settings: Settings, term: DemoTerm, base: str) -> str:
    """How to try the venue's desk as the demo's staff phone."""
    if term.staff_venue_id is None:
        return (f"Venue staff: link a phone first (booking token operator, then POST "
                f"{base}/v1/venues/<venue id>/staff {{\"phone\": ...}}); they sign in at "
                f"{base}/venue/login.\n")
    where = ("its six-digit code appears in this log, on a line holding "
             f"`login_code phone_last4={STAFF_PHONE[-4:]} code=...`"
             if settings.login_codes == "log" else
             "its code leaves through the outbox, like a resident's")
    return f"""
The venue's desk: {base}/venue  (staff sign in at {base}/venue/login)
  Demo staff phone {STAFF_PHONE}, staff of teaching point {term.staff_venue_id}: {where}.
  By API: curl -s -X POST {base}/v1/auth/codes -d '{{"phone": "{STAFF_PHONE}"}}'
          curl -s -X POST {base}/v1/auth/tokens \\
               -d '{{"phone": "{STAFF_PHONE}", "code": "<code>", "role": "venue"}}'
  A sample term to import at {base}/venue/import: {SAMPLE_TERM}
"""

