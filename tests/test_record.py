"""The learning record: hours of the lessons a resident was checked in at, once each, signed
with EdDSA so the credit bank can check it against `/.well-known/jwks.json`; the page, and the
CSV that a spreadsheet opens without running a formula a venue typed into a course title.

Attendance rows are written with plain SQL for real bookings made through the API (the check-in
API is a part of its own, tested elsewhere)."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from conftest import SECRET, grab, make_course, make_venue, resident, unique
from jwt.api_jws import PyJWS

from booking.core.auth import mint
from booking.core.settings import ConfigError, Settings
from booking.record import RecordSigner
from booking.web.spreadsheet import safe_cell

FORMULA_TITLES = ['=HYPERLINK("x")', "+1", "-1", "@a"]
DAY = date(2025, 3, 4)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def _course(http: httpx.AsyncClient, venue_id: int, title: str,
                  hours: float) -> dict[str, Any]:
    starts = datetime.now(UTC) + timedelta(days=7)
    return await make_course(http, 10, venue_id=venue_id, title=title,
                             starts_at=starts.isoformat(),
                             ends_at=(starts + timedelta(hours=hours)).isoformat())


async def _booked(http: httpx.AsyncClient, course_id: int, who: str) -> str:
    answer = await grab(http, course_id, who)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def _attended(db, booking_id: str, *days: date) -> None:
    """What a check-in writes: one row per booking and lesson date (again: nothing added)."""
    for day in days:
        await db.execute("INSERT INTO attendance (booking_id, lesson_date, method, verifier) "
                         "VALUES ($1::uuid, $2, 'qr', 'test-staff') "
                         "ON CONFLICT (booking_id, lesson_date) DO NOTHING", booking_id, day)


@pytest.fixture(scope="module")
async def learner(http, db) -> dict[str, Any]:
    """A resident checked in at a 2-hour course twice (one lesson scanned twice), a 1.5-hour
    course once and each formula-titled course once; booked but never at a third course; and
    another resident at the first course."""
    who = unique("learner")
    venue_id = await make_venue(http)
    long = await _course(http, venue_id, unique("书法"), 2)
    short = await _course(http, venue_id, unique("太极"), 1.5)
    skipped = await _course(http, venue_id, unique("never-came"), 3)
    tricky = [await _course(http, venue_id, title, 1) for title in FORMULA_TITLES]
    booking = await _booked(http, long["id"], who)
    await _attended(db, booking, DAY, DAY + timedelta(days=7), DAY)
    await _attended(db, await _booked(http, short["id"], who), DAY + timedelta(days=1))
    await _booked(http, skipped["id"], who)
    for n, course in enumerate(tricky):
        await _attended(db, await _booked(http, course["id"], who), DAY + timedelta(days=2 + n))
    await _attended(db, await _booked(http, long["id"], unique("other")), DAY + timedelta(days=14))
    return {"who": who, "venue_id": venue_id, "long": long, "short": short, "skipped": skipped,
            "tricky": tricky, "total": 2 + 2 + 1.5 + len(FORMULA_TITLES)}


async def _signed(http: httpx.AsyncClient, who: str) -> dict[str, Any]:
    answer = await http.get("/v1/me/record", headers=resident(who))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _published_key(http: httpx.AsyncClient) -> jwt.PyJWK:
    answer = await http.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    (key,) = answer.json()["keys"]
    assert {k: key[k] for k in ("kty", "crv", "use", "alg")} == {
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA"}
    return jwt.PyJWK(key)


# --- the record -------------------------------------------------------------------------------

async def test_hours_are_the_lessons_checked_in_once_each(http, learner):
    record = (await _signed(http, learner["who"]))["record"]
    assert record["resident_id"] == learner["who"]
    assert record["issuer"] == "booking"
    issued = datetime.fromisoformat(record["issued_at"])
    assert issued.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - issued).total_seconds()) < 60
    got = [(e["date"], e["course_id"], e["hours"]) for e in record["entries"]]
    expected = [(DAY.isoformat(), learner["long"]["id"], 2),
                ((DAY + timedelta(days=1)).isoformat(), learner["short"]["id"], 1.5),
                *[((DAY + timedelta(days=2 + n)).isoformat(), course["id"], 1)
                  for n, course in enumerate(learner["tricky"])],
                ((DAY + timedelta(days=7)).isoformat(), learner["long"]["id"], 2)]
    assert got == expected  # the other resident's lesson and the course never attended: absent
    assert record["total_hours"] == learner["total"] == 9.5
    first = record["entries"][0]
    assert first["course_title"] == learner["long"]["title"]
    assert first["venue_id"] == learner["venue_id"]
    assert first["venue_name"]


async def test_a_resident_without_attendance_has_an_empty_record(http):
    record = (await _signed(http, unique("newcomer")))["record"]
    assert record["entries"] == [] and record["total_hours"] == 0


async def test_the_record_needs_a_resident_token(http):
    assert (await http.get("/v1/me/record")).status_code == 401
    venue = {"Authorization": f"Bearer {mint(SECRET, 'venue', 'desk', venue_id=1)}"}
    assert (await http.get("/v1/me/record", headers=venue)).status_code == 403


# --- the signature ----------------------------------------------------------------------------

async def test_the_jws_verifies_with_the_published_key_and_its_payload_is_the_record(
        http, learner):
    signed = await _signed(http, learner["who"])
    key = await _published_key(http)
    header = jwt.get_unverified_header(signed["jws"])
    assert header["alg"] == "EdDSA" and header["kid"] == key.key_id
    verified = PyJWS().decode_complete(signed["jws"], key, algorithms=["EdDSA"])
    assert json.loads(verified["payload"]) == signed["record"]
    # what a credit bank using a JOSE library's JWT decoder gets, too
    assert jwt.decode(signed["jws"], key, algorithms=["EdDSA"]) == signed["record"]


async def test_a_tampered_record_fails_verification(http, learner):
    signed = await _signed(http, learner["who"])
    key = await _published_key(http)
    header, _, signature = signed["jws"].split(".")
    inflated = {**signed["record"], "total_hours": 999}
    forged = f"{header}.{_b64url(json.dumps(inflated).encode())}.{signature}"
    with pytest.raises(jwt.InvalidSignatureError):
        PyJWS().decode_complete(forged, key, algorithms=["EdDSA"])
    other = RecordSigner(bytes(32)).sign(json.dumps(signed["record"]).encode())
    with pytest.raises(jwt.InvalidSignatureError):
        PyJWS().decode_complete(other, key, algorithms=["EdDSA"])


async def test_every_worker_publishes_the_key_derived_from_the_secret(http):
    derived = RecordSigner.of(Settings(database_url=None, redis_url=None, secret=SECRET))
    for _ in range(6):  # two workers behind one port
        answer = await http.get("/.well-known/jwks.json")
        assert answer.json()["keys"] == [{"kty": "OKP", "crv": "Ed25519", "x": derived.public.x,
                                          "kid": derived.kid, "use": "sig", "alg": "EdDSA"}]


def test_a_configured_record_key_is_used_and_a_bad_one_refused():
    seed = bytes(range(32))
    settings = Settings(database_url=None, redis_url=None, secret=SECRET,
                        record_key=_b64url(seed))
    configured = RecordSigner.of(settings)
    assert configured.kid == RecordSigner(seed).kid
    assert configured.kid != RecordSigner.of(Settings(None, None, SECRET)).kid
    for bad in ("not base64!", _b64url(bytes(16)), _b64url(bytes(33))):
        with pytest.raises(ConfigError, match="BOOKING_RECORD_KEY"):
            RecordSigner.of(Settings(None, None, SECRET, record_key=bad))


# --- the pages --------------------------------------------------------------------------------

def _browser(server: str, who: str | None) -> httpx.AsyncClient:
    cookies = {"booking_token": mint(SECRET, "resident", who)} if who else {}
    return httpx.AsyncClient(base_url=server, cookies=cookies, timeout=30)


async def test_the_csv_has_a_bom_and_no_cell_that_starts_a_formula(server, learner):
    async with _browser(server, learner["who"]) as client:
        answer = await client.get("/me/record.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
    header, *lessons, total = rows
    assert len(header) == 6 and len(lessons) == 7
    assert total[-1] == "9.5"
    titles = {row[2] for row in lessons}
    assert {f"'{title}" for title in FORMULA_TITLES} <= titles
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
               for row in rows for cell in row)


def test_safe_cell_quotes_every_formula_start():
    for text in ['=1+1', "+1", "-1", "@SUM(A1)", "\tx", "\rx"]:
        assert safe_cell(text) == f"'{text}"
    assert safe_cell("书法 1") == "书法 1" and safe_cell(2.5) == "2.5"


async def test_the_json_download_is_the_signed_record(server, http, learner):
    async with _browser(server, learner["who"]) as client:
        answer = await client.get("/me/record.json")
    assert answer.status_code == 200
    download = answer.json()
    api = await _signed(http, learner["who"])
    assert set(download) == {"record", "jws"}
    assert {**download["record"], "issued_at": ""} == {**api["record"], "issued_at": ""}
    key = await _published_key(http)
    assert jwt.decode(download["jws"], key, algorithms=["EdDSA"]) == download["record"]


async def test_the_page_shows_the_entries_and_the_total(server, learner):
    async with _browser(server, learner["who"]) as client:
        answer = await client.get("/me/record")
    assert answer.status_code == 200
    html = answer.text
    assert html.count("<tr data-entry") == 7
    assert 'data-total-hours="9.5"' in html
    assert learner["long"]["title"] in html and learner["short"]["title"] in html
    assert learner["skipped"]["title"] not in html
    assert "&#34;x&#34;" in html or "&quot;x&quot;" in html  # =HYPERLINK("x"), escaped
    assert 'href="/me/record.csv"' in html and 'href="/me/record.json"' in html


async def test_the_english_page_and_an_empty_record(server):
    async with _browser(server, unique("newcomer")) as client:
        answer = await client.get("/me/record?lang=en")
    assert answer.status_code == 200
    assert 'data-total-hours="0"' in answer.text and "<tr data-entry" not in answer.text


@pytest.mark.parametrize("path", ["/me/record", "/me/record.csv", "/me/record.json"])
async def test_signed_out_visitors_are_sent_to_sign_in(server, path):
    async with _browser(server, None) as client:
        answer = await client.get(path)
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert location.path == "/login" and parse_qs(location.query)["next"] == [path]
