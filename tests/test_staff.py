"""Venue staff: an operator links phones to a venue; their owners sign in as that venue through
`POST /v1/auth/tokens` (`role: venue`) and the `/venue/login` pages, against the session's
service (which logs codes). Every test uses fresh random phones and client addresses.
"""

from __future__ import annotations

import uuid

import httpx
import jwt
import pytest
from conftest import OPERATOR, SECRET, auth, make_course, make_venue, resident
from test_signin import (
    PageClient,
    a_minute_passes,
    code_in_log,
    field,
    headers_from,
    logged_code,
    new_address,
    new_phone,
    other_than,
)


async def link(http: httpx.AsyncClient, venue_id: int, phone: str,
               headers: dict[str, str] = OPERATOR) -> httpx.Response:
    return await http.post(f"/v1/venues/{venue_id}/staff", json={"phone": phone},
                           headers=headers)


async def unlink(http: httpx.AsyncClient, venue_id: int, phone: str,
                 headers: dict[str, str] = OPERATOR) -> httpx.Response:
    return await http.delete(f"/v1/venues/{venue_id}/staff/{phone}", headers=headers)


async def venue_token_for(http: httpx.AsyncClient, server_log, phone: str) -> httpx.Response:
    """Ask for a code, read it from the log and trade it for a venue token."""
    code = await logged_code(http, server_log, phone, new_address())
    return await http.post("/v1/auth/tokens",
                           json={"phone": phone, "code": code, "role": "venue"},
                           headers=headers_from(new_address()))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the API ----------------------------------------------------------------------------------

async def test_a_linked_phone_signs_in_as_its_venue_and_acts_only_for_it(http, db, server_log):
    venue, other_venue = await make_venue(http), await make_venue(http)
    phone = new_phone()
    linked = await link(http, venue, phone)
    assert linked.status_code == 201, linked.text
    assert linked.json() == {"venue_id": venue, "phone": phone}
    again = await link(http, venue, f"{phone[:3]} {phone[3:7]}-{phone[7:]}")  # as typed
    assert (again.status_code, again.json()) == (200, {"venue_id": venue, "phone": phone})

    answer = await venue_token_for(http, server_log, phone)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["venue_id"] == venue and "resident_id" not in body
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["venue_id"]) == ("venue", venue)
    assert claims["sub"].startswith("staff:") and phone not in claims["sub"]
    assert await db.fetchval("SELECT count(*) FROM residents WHERE phone = $1", phone) == 0
    mine = await make_course(http, 5, venue_id=venue)
    theirs = await make_course(http, 5, venue_id=other_venue)
    own = await http.get(f"/v1/courses/{mine['id']}/bookings", headers=bearer(body["token"]))
    assert own.status_code == 200, own.text
    other = await http.get(f"/v1/courses/{theirs['id']}/bookings",
                           headers=bearer(body["token"]))
    assert other.status_code == 403


async def test_the_same_phone_signs_in_with_the_same_subject(http, db, server_log):
    venue, phone = await make_venue(http), new_phone()
    assert (await link(http, venue, phone)).status_code == 201
    first = (await venue_token_for(http, server_log, phone)).json()["token"]
    await a_minute_passes(db, phone)
    second = (await venue_token_for(http, server_log, phone)).json()["token"]
    subjects = {jwt.decode(t, SECRET, algorithms=["HS256"])["sub"] for t in (first, second)}
    assert len(subjects) == 1


async def test_a_phone_linked_to_no_venue_gets_no_venue_token(http, db, server_log):
    phone = new_phone()
    code = await logged_code(http, server_log, phone, new_address())

    wrong = await http.post("/v1/auth/tokens",
                            json={"phone": phone, "code": other_than(code), "role": "venue"})
    assert (wrong.status_code, wrong.json()["code"]) == (400, "wrong_code")  # the code first
    refused = await http.post("/v1/auth/tokens",
                              json={"phone": phone, "code": code, "role": "venue"})

    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "not_staff" and "token" not in refused.json()
    assert "not linked to any venue" in refused.json()["detail"]
    as_resident = await http.post("/v1/auth/tokens", json={"phone": phone, "code": code})
    assert as_resident.status_code == 200  # the code was not spent on the refusal
    assert jwt.decode(as_resident.json()["token"], SECRET,
                      algorithms=["HS256"])["role"] == "resident"


async def test_an_unlinked_phone_gets_no_new_venue_token(http, server_log):
    venue, phone = await make_venue(http), new_phone()
    assert (await link(http, venue, phone)).status_code == 201

    removed = await unlink(http, venue, phone)

    assert (removed.status_code, removed.json()) == (200, {"venue_id": venue, "phone": phone})
    assert (await unlink(http, venue, phone)).status_code == 404
    refused = await venue_token_for(http, server_log, phone)
    assert (refused.status_code, refused.json()["code"]) == (403, "not_staff")


async def test_a_phone_is_staff_of_one_venue_only(http):
    first, second = await make_venue(http), await make_venue(http)
    phone = new_phone()
    assert (await link(http, first, phone)).status_code == 201

    elsewhere = await link(http, second, phone)

    assert elsewhere.status_code == 409
    assert elsewhere.json()["code"] == "staff_elsewhere"
    assert (await unlink(http, second, phone)).status_code == 404
    assert (await unlink(http, first, phone)).status_code == 200
    assert (await link(http, second, phone)).status_code == 201


async def test_bad_links_are_refused(http, db):
    venue, phone = await make_venue(http), new_phone()
    unknown = await link(http, 10**12, phone)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (await link(http, 2**63, phone)).status_code in (400, 404)
    for bad in ("12345", "+8613800000001", "1380000000a"):
        answer = await link(http, venue, bad)
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_phone"), bad
    extra = await http.post(f"/v1/venues/{venue}/staff", json={"phone": phone, "role": "x"},
                            headers=OPERATOR)
    assert (extra.status_code, extra.json()["code"]) == (400, "invalid")
    assert await db.fetchval("SELECT count(*) FROM venue_staff WHERE phone = $1", phone) == 0


async def test_only_operators_link_and_unlink_and_a_venue_sees_only_its_staff(http):
    venue, other_venue = await make_venue(http), await make_venue(http)
    phones = sorted([new_phone(), new_phone()])
    for phone in phones:
        assert (await link(http, venue, phone)).status_code == 201
    own_venue = auth("venue", "staff:test", venue_id=venue)
    for headers in (resident("not-an-operator"), own_venue):
        assert (await link(http, venue, new_phone(), headers)).status_code == 403
        assert (await unlink(http, venue, phones[0], headers)).status_code == 403
    assert (await http.get(f"/v1/venues/{venue}/staff",
                           headers=resident("nosy"))).status_code == 403
    assert (await http.get(f"/v1/venues/{venue}/staff",
                           headers=auth("venue", "s", venue_id=other_venue))).status_code == 403

    listed = await http.get(f"/v1/venues/{venue}/staff", headers=own_venue)

    assert listed.status_code == 200, listed.text
    masked = sorted(member["phone"] for member in listed.json())
    assert masked == sorted(f"{p[:3]}****{p[-4:]}" for p in phones)
    by_operator = await http.get(f"/v1/venues/{venue}/staff", headers=OPERATOR)
    assert len(by_operator.json()) == 2
    assert (await http.get("/v1/venues/999999999/staff", headers=OPERATOR)).status_code == 404


# --- the pages --------------------------------------------------------------------------------

@pytest.fixture
async def pages(server):
    async with httpx.AsyncClient(base_url=server, follow_redirects=False, timeout=30) as http:
        yield PageClient(http)


async def ask_on_staff_page(pages: PageClient, phone: str, server_log,
                            next_path: str = "") -> tuple[httpx.Response, str]:
    """Ask for a code on /venue/login; the code form and the code from the log."""
    request_id = uuid.uuid4().hex
    sent = await pages.post("/venue/login", {"phone": phone, "next": next_path},
                            request_id=request_id)
    assert sent.status_code == 200, sent.text
    return sent, await code_in_log(server_log, request_id, phone)


async def test_staff_sign_in_on_the_page_and_go_to_the_desk(http, pages, server_log):
    venue, phone = await make_venue(http), new_phone()
    assert (await link(http, venue, phone)).status_code == 201
    form = await pages.get("/venue/login")
    assert form.status_code == 200
    assert 'action="/venue/login"' in form.text and 'autocomplete="tel"' in field(form.text,
                                                                                  "phone")

    sent, code = await ask_on_staff_page(pages, phone, server_log)
    assert 'action="/venue/login/code"' in sent.text
    assert 'autocomplete="one-time-code"' in field(sent.text, "code")
    right = await pages.post("/venue/login/code", {"phone": phone, "code": code, "next": ""})

    assert (right.status_code, right.headers["location"]) == (303, "/venue")
    assert "HttpOnly" in right.headers["set-cookie"]
    claims = jwt.decode(pages.http.cookies["booking_token"], SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["venue_id"]) == ("venue", venue)
    signed_in = await pages.get("/venue/login")
    assert 'id="signed-in"' in signed_in.text and 'name="phone"' not in signed_in.text
    course = await make_course(http, 5, venue_id=venue)
    roster = await http.get(f"/v1/courses/{course['id']}/bookings",
                            headers=bearer(pages.http.cookies["booking_token"]))
    assert roster.status_code == 200


async def test_the_staff_page_goes_on_to_next_but_never_off_the_site(http, db, pages,
                                                                    server_log):
    venue, phone = await make_venue(http), new_phone()
    assert (await link(http, venue, phone)).status_code == 201
    await pages.get("/venue/login?next=/venue/import")
    _, code = await ask_on_staff_page(pages, phone, server_log, "//evil.com")
    away = await pages.post("/venue/login/code", {"phone": phone, "code": code,
                                                  "next": "//evil.com"})
    assert (away.status_code, away.headers["location"]) == (303, "/venue")

    await a_minute_passes(db, phone)
    _, code = await ask_on_staff_page(pages, phone, server_log, "/venue/import")
    onward = await pages.post("/venue/login/code", {"phone": phone, "code": code,
                                                    "next": "/venue/import"})
    assert (onward.status_code, onward.headers["location"]) == (303, "/venue/import")


async def test_a_phone_linked_to_no_venue_is_told_beside_the_field(pages, server_log):
    await pages.get("/venue/login")
    phone = new_phone()
    _, code = await ask_on_staff_page(pages, phone, server_log)

    refused = await pages.post("/venue/login/code", {"phone": phone, "code": code, "next": ""})

    assert refused.status_code == 403
    assert 'id="phone-error"' in refused.text and f'value="{phone}"' in field(refused.text,
                                                                               "phone")
    assert 'action="/venue/login"' in refused.text
    assert "booking_token" not in refused.headers.get("set-cookie", "")
    assert pages.http.cookies.get("booking_token") is None

