"""Signing in with a phone, through the API and the `/login` pages, against the session's
service (which logs codes: BOOKING_LOGIN_CODES=log) and, for the outbox road, a `SignIn` built
in this process on the test database.

Every test uses phones and client addresses of its own (random, so a rerun within the minute or
the address window starts clean): the 60-s rule and the per-address limit never cross tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from conftest import SECRET, client_of, wait_for

from booking.core.settings import Settings
from booking.signin import ADDRESS_LIMIT, CODE_TRIES, SignIn

CODE_LINE = re.compile(r"login_code phone_last4=(\d{4}) code=(\d{6})")
LOGGED = Settings(database_url=None, redis_url=None, secret=SECRET, login_codes="log")


def new_phone() -> str:
    return f"1{random.randint(3, 9)}{random.randrange(10**9):09d}"


def new_address() -> str:
    """A client address of this test's own, sent as X-Forwarded-For (the service trusts it
    from 127.0.0.1, as it would from a proxy in front of it)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def headers_from(address: str, request_id: str | None = None) -> dict[str, str]:
    return {"X-Forwarded-For": address, "X-Request-Id": request_id or uuid.uuid4().hex}


async def log_lines(log: Path, request_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The service's log events of one request, once at least one was written."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().split("\n")[:-1]  # the last one may still be being written
        ours = [event for event in (json.loads(line) for line in lines if line.startswith("{"))
                if event.get("request_id") == request_id]
        if ours or time.monotonic() > deadline:
            return ours
        await asyncio.sleep(0.05)


async def code_in_log(log: Path, request_id: str, phone: str) -> str:
    """The code the service logged for a request that asked for one."""
    events = await log_lines(log, request_id)
    found = [CODE_LINE.search(str(event["msg"])) for event in events]
    codes = [match for match in found if match]
    assert len(codes) == 1, f"expected one login_code line, got {events}"
    assert codes[0][1] == phone[-4:]
    return codes[0][2]


async def ask_code(http: httpx.AsyncClient, phone: str, address: str,
                   request_id: str | None = None) -> httpx.Response:
    return await http.post("/v1/auth/codes", json={"phone": phone},
                           headers=headers_from(address, request_id))


async def logged_code(http: httpx.AsyncClient, log: Path, phone: str, address: str) -> str:
    """Ask for a code (202) and read it from the service's log."""
    request_id = uuid.uuid4().hex
    answer = await ask_code(http, phone, address, request_id)
    assert answer.status_code == 202, answer.text
    return await code_in_log(log, request_id, phone)


async def token_for(http: httpx.AsyncClient, phone: str, code: str,
                    **extra: str) -> httpx.Response:
    return await http.post("/v1/auth/tokens",
                           json={"phone": phone, "code": code, "role": "resident", **extra})


def other_than(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def a_minute_passes(db: asyncpg.Pool, phone: str) -> None:
    """As if the phone's last code had been sent more than a minute ago."""
    await db.execute("UPDATE login_codes SET sent_at = sent_at - interval '61 seconds' "
                     "WHERE phone = $1", phone)


# --- the API ----------------------------------------------------------------------------------

async def test_a_code_signs_a_new_resident_in_and_the_token_works(http, db, server_log):
    phone, address = new_phone(), new_address()
    request_id = uuid.uuid4().hex
    asked = await ask_code(http, phone, address, request_id)
    assert asked.status_code == 202
    assert asked.json() == {"sent": True, "resend_after_s": 60, "expires_in_s": 600}
    code = await code_in_log(server_log, request_id, phone)
    assert await db.fetchval("SELECT count(*) FROM residents WHERE phone = $1", phone) == 0

    answer = await token_for(http, phone, code)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    resident_id = body["resident_id"]
    assert resident_id.startswith("r_") and phone not in resident_id
    assert await db.fetchval("SELECT id FROM residents WHERE phone = $1", phone) == resident_id
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == (resident_id, "resident")
    mine = await http.get("/v1/me/bookings", headers={"Authorization": f"Bearer {body['token']}"})
    assert mine.status_code == 200 and mine.json() == []
    again = await token_for(http, phone, code)  # a code works once
    assert again.status_code == 400 and again.json()["code"] == "code_expired"

    await a_minute_passes(db, phone)
    second = await token_for(http, phone, await logged_code(http, server_log, phone, address))
    assert second.json()["resident_id"] == resident_id  # the same resident next time
    assert await db.fetchval("SELECT count(*) FROM residents WHERE phone = $1", phone) == 1


async def test_bad_phones_roles_and_bodies_are_refused(http, db):
    address = new_address()
    for phone in ("", "12345", "12800000000", "1380000000a", "138000000011", "+8613800000001",
                  "13800000001\x00"):
        answer = await ask_code(http, phone, address)
        assert answer.status_code == 400, phone
        assert answer.json()["code"] == "invalid_phone", phone
        answer = await token_for(http, phone, "123456")
        assert answer.json()["code"] == "invalid_phone", phone

    phone = new_phone()
    refusals = {
        "role_not_supported": await token_for(http, phone, "123456", role="operator"),
        "code_expired": await token_for(http, phone, "123456"),  # no code was ever sent
        "invalid_code": await token_for(http, phone, "12a456"),
    }
    for code, answer in refusals.items():
        assert (answer.status_code, answer.json()["code"]) == (400, code), answer.text
    for path, body in (("/v1/auth/codes", {"phone": phone, "more": 1}),
                       ("/v1/auth/tokens", {"phone": phone, "code": "123456", "x": 1})):
        answer = await http.post(path, json=body)
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid")
    assert await db.fetchval("SELECT count(*) FROM login_codes WHERE phone = $1", phone) == 0


async def test_spaces_and_hyphens_in_a_phone_are_ignored(http, server_log):
    phone = new_phone()
    typed = f"{phone[:3]} {phone[3:7]}-{phone[7:]}"
    code = await logged_code(http, server_log, typed, new_address())
    assert (await token_for(http, typed, code)).status_code == 200


async def test_one_code_per_phone_per_minute(http, db, server_log):
    phone, address = new_phone(), new_address()
    code = await logged_code(http, server_log, phone, address)
    sent_at = await db.fetchval("SELECT sent_at FROM login_codes WHERE phone = $1", phone)

    again = await ask_code(http, phone, new_address())

    assert again.status_code == 429
    assert again.json()["code"] == "too_soon"
    assert 1 <= int(again.headers["Retry-After"]) <= 60
    assert await db.fetchval("SELECT sent_at FROM login_codes WHERE phone = $1", phone) == sent_at
    await a_minute_passes(db, phone)
    newer = await logged_code(http, server_log, phone, address)
    if newer != code:  # the old code was replaced (the same digits again: one in a million)
        assert (await token_for(http, phone, code)).json()["code"] == "wrong_code"
    assert (await token_for(http, phone, newer)).status_code == 200


async def test_concurrent_asks_for_one_phone_send_one_code(server, db, server_log):
    phone = new_phone()
    request_ids = [uuid.uuid4().hex for _ in range(10)]
    async with client_of(server, 10) as http:  # ten connections: truly concurrent requests
        answers = await asyncio.gather(*(ask_code(http, phone, new_address(), request_id)
                                         for request_id in request_ids))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202] + [429] * 9
    winner = request_ids[[a.status_code for a in answers].index(202)]
    code = await code_in_log(server_log, winner, phone)
    for request_id in request_ids:  # the refused ones logged no code
        if request_id != winner:
            events = await log_lines(server_log, request_id, timeout=0)
            assert not any("login_code" in str(event["msg"]) for event in events)
    row = await db.fetchrow("SELECT code_hash, tries_left FROM login_codes WHERE phone = $1",
                            phone)
    assert row["code_hash"] == SignIn(db, LOGGED).code_hash(phone, code)


async def test_a_code_sent_twice_at_once_signs_in_once(server, server_log):
    phone = new_phone()
    async with client_of(server, 5) as http:
        code = await logged_code(http, server_log, phone, new_address())
        answers = await asyncio.gather(*(token_for(http, phone, code) for _ in range(5)))

    assert sorted(answer.status_code for answer in answers) == [200] + [400] * 4
    assert {answer.json()["code"] for answer in answers if answer.status_code == 400} == {
        "code_expired"}


async def test_five_wrong_tries_use_the_code_up(http, server_log):
    phone = new_phone()
    code = await logged_code(http, server_log, phone, new_address())

    for left in range(CODE_TRIES - 1, -1, -1):
        answer = await token_for(http, phone, other_than(code))
        assert answer.status_code == 400
        body = answer.json()
        assert (body["code"], body["tries_left"]) == ("wrong_code", left)
        assert (f"{left} tr" in body["detail"]) if left else ("no tries" in body["detail"])
    right_but_late = await token_for(http, phone, code)

    assert right_but_late.status_code == 429
    assert right_but_late.json()["code"] == "too_many_tries"
    assert int(right_but_late.headers["Retry-After"]) >= 1


async def test_an_expired_code_is_refused(http, db, server_log):
    phone = new_phone()
    code = await logged_code(http, server_log, phone, new_address())
    await db.execute("UPDATE login_codes SET expires_at = now() - interval '1 second' "
                     "WHERE phone = $1", phone)

    answer = await token_for(http, phone, code)

    assert (answer.status_code, answer.json()["code"]) == (400, "code_expired")
    assert await db.fetchval("SELECT count(*) FROM residents WHERE phone = $1", phone) == 0


async def test_codes_are_stored_hashed_and_live_ten_minutes(http, db, server_log):
    phone = new_phone()
    code = await logged_code(http, server_log, phone, new_address())

    row = await db.fetchrow("SELECT *, expires_at - sent_at AS lifetime FROM login_codes "
                            "WHERE phone = $1", phone)

    assert row["code_hash"] == SignIn(db, LOGGED).code_hash(phone, code)
    assert len(row["code_hash"]) == 32 and code.encode() not in row["code_hash"]
    assert code not in row["resident_id"] and code not in row["phone"]
    assert row["tries_left"] == CODE_TRIES
    assert row["lifetime"].total_seconds() == 600


async def test_an_address_gets_a_limited_number_of_codes(http, db):
    address = new_address()
    limit, window_s = ADDRESS_LIMIT
    answers = [await ask_code(http, new_phone(), address) for _ in range(limit)]
    assert [a.status_code for a in answers] == [202] * limit

    phone = new_phone()
    refused = await ask_code(http, phone, address)

    assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
    assert 60 < int(refused.headers["Retry-After"]) <= window_s
    assert await db.fetchval("SELECT count(*) FROM login_codes WHERE phone = $1", phone) == 0
    assert (await ask_code(http, phone, new_address())).status_code == 202  # others still may


async def test_no_log_line_but_the_code_line_holds_the_phone_or_the_code(http, server_log):
    phone, address = new_phone(), new_address()
    request_id = uuid.uuid4().hex
    await ask_code(http, phone, address, request_id)
    code = await code_in_log(server_log, request_id, phone)
    await token_for(http, phone, other_than(code))
    await token_for(http, phone, code)
    await ask_code(http, phone, address)  # too soon

    text = server_log.read_text()
    assert phone not in text
    assert [line for line in text.splitlines() if code in line and phone[-4:] in line] == [
        line for line in text.splitlines() if request_id in line and "login_code" in line]


# --- the outbox road --------------------------------------------------------------------------

async def test_without_the_log_a_code_leaves_through_the_outbox(db, server_log, caplog):
    """A SignIn of this process, set to the outbox, on the test database: the outbox row names
    the resident-to-be and carries phone and code for the SMS gateway; the session's service
    (no webhook configured) delivers it to its log with neither in it."""
    signin = SignIn(db, replace(LOGGED, login_codes="outbox"))
    phone = new_phone()
    caplog.set_level(logging.DEBUG)

    await signin.send_code(phone, new_address())

    row = await db.fetchrow("SELECT id, resident_id, payload::text AS payload FROM outbox "
                            "WHERE kind = 'login_code' AND payload->>'phone' = $1", phone)
    payload = json.loads(row["payload"])
    code = payload["code"]
    assert re.fullmatch(r"\d{6}", code) and payload["expires_at"]
    assert row["resident_id"].startswith("r_")
    assert not any(code in record.getMessage() or phone in record.getMessage()
                   for record in caplog.records)
    signed = await signin.sign_in(phone, code)
    assert signed.resident_id == row["resident_id"]  # the resident the outbox row named

    async def delivered() -> bool:
        return await db.fetchval("SELECT sent_at IS NOT NULL FROM outbox WHERE id = $1",
                                 row["id"])
    await wait_for(delivered)
    text = server_log.read_text()
    assert f"notification {row['id']} (login_code)" in text
    assert phone not in text and f"code={code}" not in text


# --- the pages --------------------------------------------------------------------------------

CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


class PageClient:
    """A cookie-keeping client that posts forms the way a browser does, from one address."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.address = new_address()
        self.csrf = ""

    async def get(self, path: str) -> httpx.Response:
        answer = await self.http.get(path, headers=headers_from(self.address))
        found = CSRF_FIELD.search(answer.text)
        if found:
            self.csrf = found[1]
        return answer

    async def post(self, path: str, form: dict[str, str], *, csrf: bool = True,
                   request_id: str | None = None, **headers: str) -> httpx.Response:
        data = {**form, **({"_csrf_token": self.csrf} if csrf else {})}
        return await self.http.post(path, data=data,
                                    headers={**headers_from(self.address, request_id), **headers})


@pytest.fixture
async def pages(server):
    async with httpx.AsyncClient(base_url=server, follow_redirects=False, timeout=30) as http:
        yield PageClient(http)


def field(html: str, name: str) -> str:
    """The tag of the input named `name`."""
    found = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    assert found, f"no input {name!r} in the page"
    return found[0]


async def ask_on_page(pages: PageClient, phone: str, next_path: str = "/me/bookings"
                      ) -> tuple[httpx.Response, str]:
    request_id = uuid.uuid4().hex
    answer = await pages.post("/login", {"phone": phone, "next": next_path},
                                request_id=request_id)
    return answer, request_id


async def test_signing_in_on_the_pages_sets_the_token_cookie(pages, server_log):
    form = await pages.get("/login?next=/courses/1")
    assert form.status_code == 200
    assert 'autocomplete="tel"' in field(form.text, "phone")
    assert 'inputmode="numeric"' in field(form.text, "phone")
    assert 'value="/courses/1"' in field(form.text, "next")
    assert '<label for="phone">' in form.text and 'class="primary"' in form.text
    assert pages.http.cookies.get("csrftoken") and pages.csrf

    phone = new_phone()
    sent, request_id = await ask_on_page(pages, phone, "/courses/1")
    assert sent.status_code == 200
    code_input = field(sent.text, "code")
    assert 'autocomplete="one-time-code"' in code_input and 'inputmode="numeric"' in code_input
    assert f'value="{phone}"' in field(sent.text, "phone")
    assert '<label for="code">' in sent.text
    code = await code_in_log(server_log, request_id, phone)

    wrong = await pages.post("/login/code", {"phone": phone, "code": other_than(code),
                                               "next": "/courses/1"})
    assert wrong.status_code == 400
    assert 'id="code-error"' in wrong.text and "4" in wrong.text
    assert pages.http.cookies.get("booking_token") is None

    right = await pages.post("/login/code", {"phone": phone, "code": code,
                                               "next": "/courses/1"})
    assert right.status_code == 303
    assert right.headers["location"] == "/courses/1"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("booking_token=")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert "Max-Age=2592000" in cookie and "secure" not in cookie.lower()
    token = pages.http.cookies["booking_token"]
    mine = await pages.http.get("/v1/me/bookings", headers={"Authorization": f"Bearer {token}"})
    assert mine.status_code == 200

    signed_in = await pages.get("/login")
    assert 'id="signed-in"' in signed_in.text and 'name="phone"' not in signed_in.text

    out = await pages.post("/logout", {})
    assert (out.status_code, out.headers["location"]) == (303, "/")
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert pages.http.cookies.get("booking_token") is None
    assert 'name="phone"' in (await pages.get("/login")).text


@pytest.mark.parametrize("next_path", ["//evil.com", "https://evil.com/", "/\\evil.com", ""])
async def test_next_never_leaves_the_site(pages, server_log, next_path):
    await pages.get("/login")
    phone = new_phone()
    _, request_id = await ask_on_page(pages, phone, next_path)
    code = await code_in_log(server_log, request_id, phone)

    answer = await pages.post("/login/code", {"phone": phone, "code": code,
                                                "next": next_path})

    assert (answer.status_code, answer.headers["location"]) == (303, "/me/bookings")


async def test_the_cookie_is_secure_over_https(pages, server_log):
    await pages.get("/login")
    phone = new_phone()
    _, request_id = await ask_on_page(pages, phone)
    code = await code_in_log(server_log, request_id, phone)

    answer = await pages.post("/login/code", {"phone": phone, "code": code},
                                **{"X-Forwarded-Proto": "https"})

    assert answer.status_code == 303
    assert "secure" in answer.headers["set-cookie"].lower()


async def test_page_errors_are_beside_the_field(pages, db, server_log):
    await pages.get("/login")
    bad = await pages.post("/login", {"phone": "12345", "next": "/"})
    assert bad.status_code == 400
    assert 'id="phone-error"' in bad.text and 'value="12345"' in field(bad.text, "phone")

    phone = new_phone()
    _, request_id = await ask_on_page(pages, phone)
    code = await code_in_log(server_log, request_id, phone)
    again, again_id = await ask_on_page(pages, phone)  # a reload: the same code still works
    assert again.status_code == 200 and 'name="code"' in again.text
    assert not any("login_code" in str(e["msg"]) for e in await log_lines(server_log, again_id,
                                                                          timeout=0))
    short = await pages.post("/login/code", {"phone": phone, "code": "123"})
    assert short.status_code == 400 and 'id="code-error"' in short.text

    await db.execute("UPDATE login_codes SET expires_at = now() WHERE phone = $1", phone)
    expired = await pages.post("/login/code", {"phone": phone, "code": code})
    assert expired.status_code == 400 and 'id="code-error"' in expired.text
    assert 'id="login-resend"' in expired.text


async def test_a_form_post_without_the_csrf_token_is_refused_and_sends_nothing(
        pages, db, server_log):
    await pages.get("/login")
    phone = new_phone()
    request_id = uuid.uuid4().hex

    answer = await pages.post("/login", {"phone": phone, "next": "/"}, csrf=False,
                                request_id=request_id)

    assert answer.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM login_codes WHERE phone = $1", phone) == 0
    events = await log_lines(server_log, request_id, timeout=0)
    assert not any("login_code" in str(event["msg"]) for event in events)
    forged = await pages.post("/login/code", {"phone": phone, "code": "123456"}, csrf=False)
    assert forged.status_code == 403 and pages.http.cookies.get("booking_token") is None
