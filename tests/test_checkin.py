"""Check-in tokens and codes, and the QR on /me/bookings read back as a door scanner would.

The QR is decoded for real: the page's inline SVG (segno draws each row of dark modules as
horizontal strokes of a path) is painted onto a Pillow image, module by module, and that PNG-like
raster is read by zxing-cpp, the same decoder the browser tests use. Nothing is compared with a
QR re-made from the token: what the page drew is what is read.
"""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import httpx
import pytest
import zxingcpp
from conftest import SECRET, grab, make_course, unique
from PIL import Image, ImageDraw

from booking.checkin import (
    CROCKFORD,
    booking_of_token,
    checkin_code,
    checkin_qr,
    checkin_token,
    code_matches,
    qr_svg,
)
from booking.core.auth import mint

OTHER_SECRET = "another-secret-that-is-long-enough-too"
PIXELS_PER_MODULE = 8


# --- the token --------------------------------------------------------------------------------

def test_a_token_names_its_booking_and_only_that_one():
    ids = [str(uuid.uuid4()) for _ in range(200)]
    tokens = [checkin_token(SECRET, booking_id) for booking_id in ids]
    assert [booking_of_token(SECRET, token) for token in tokens] == ids
    assert len(set(tokens)) == len(ids)
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{38}", token)
        raw = base64.urlsafe_b64decode(token + "==")
        assert len(raw) - 16 >= 12  # a MAC of at least 96 bits after the 16-byte id


@pytest.mark.parametrize("tamper", [
    "flip a MAC character", "flip an id character", "drop the last character",
    "add a character", "other secret", "spare padding bits", "empty", "not base64",
    "not ascii", "far too long",
])
def test_a_tampered_or_foreign_token_is_refused(tamper):
    booking_id = str(uuid.uuid4())
    token = checkin_token(SECRET, booking_id)

    def flipped(at: int) -> str:
        return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]

    bad = {
        "flip a MAC character": flipped(30),
        "flip an id character": flipped(3),
        "drop the last character": token[:-1],
        "add a character": token + "A",
        "other secret": checkin_token(OTHER_SECRET, booking_id),
        # The last character carries 4 unused bits: another spelling of the same bytes.
        "spare padding bits": token[:-1] + base64_twin(token[-1]),
        "empty": "",
        "not base64": token[:10] + "!*" + token[12:],
        "not ascii": token[:10] + "签到" + token[12:],
        "far too long": token * 10,
    }[tamper]
    assert bad != token
    assert booking_of_token(SECRET, bad) is None


def base64_twin(char: str) -> str:
    """A base64url character with the same top two bits as `char` but other low bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(char)
    return alphabet[value ^ 0b0001]


def test_every_token_fits_a_qr_code_of_version_4_or_less():
    versions = {checkin_qr(checkin_token(SECRET, uuid.uuid4())).version for _ in range(500)}
    assert max(versions) <= 4
    assert checkin_qr(checkin_token(SECRET, uuid.uuid4())).error == "M"


# --- the 8-character code ---------------------------------------------------------------------

def test_the_code_is_eight_unambiguous_characters_tied_to_its_booking():
    booking_id = str(uuid.uuid4())
    code = checkin_code(SECRET, booking_id)
    assert len(code) == 8 and set(code) <= set(CROCKFORD)
    assert not set(code) & set("ILOU")
    assert code == checkin_code(SECRET, uuid.UUID(booking_id))
    assert code != checkin_code(OTHER_SECRET, booking_id)
    codes = {checkin_code(SECRET, uuid.uuid4()) for _ in range(2000)}
    assert len(codes) == 2000  # 40 bits: no collisions among a course's few hundred


def test_a_typed_code_is_forgiven_its_case_spaces_and_look_alikes():
    booking_id = str(uuid.uuid4())
    code = checkin_code(SECRET, booking_id)
    assert code_matches(SECRET, booking_id, code)
    assert code_matches(SECRET, booking_id, f" {code[:4].lower()} - {code[4:]} ")
    looks_alike = code.replace("0", "O").replace("1", "l")
    assert code_matches(SECRET, booking_id, looks_alike)
    assert not code_matches(SECRET, booking_id, code[:-1])
    wrong_last = CROCKFORD[(CROCKFORD.index(code[-1]) + 1) % 32]
    assert not code_matches(SECRET, booking_id, code[:-1] + wrong_last)
    assert not code_matches(SECRET, str(uuid.uuid4()), code)


# --- the QR as drawn --------------------------------------------------------------------------

def raster_of(svg: str) -> Image.Image:
    """Paint segno's inline SVG: a white background and one path of unit-wide horizontal
    strokes (`M x y`, `m dx dy`, `h n`) whose y is a module row's centre."""
    size = int(re.search(r'viewBox="0 0 (\d+) \1"', svg).group(1))
    (path,) = re.findall(r'<path stroke="#000" d="([^"]+)"', svg)
    image = Image.new("L", (size * PIXELS_PER_MODULE,) * 2, 255)
    draw = ImageDraw.Draw(image)
    x = y = 0.0
    for command, numbers in re.findall(r"([MmHhVv])([-\d.\s]+)", path):
        values = [float(n) for n in numbers.split()]
        if command in "Mm":
            x, y = (values[0], values[1]) if command == "M" else (x + values[0], y + values[1])
        elif command in "Hh":
            end = values[0] if command == "H" else x + values[0]
            row = int(y - 0.5)
            draw.rectangle([min(x, end) * PIXELS_PER_MODULE, row * PIXELS_PER_MODULE,
                            max(x, end) * PIXELS_PER_MODULE - 1,
                            (row + 1) * PIXELS_PER_MODULE - 1], fill=0)
            x = end
        else:
            raise AssertionError(f"unexpected path command {command}")
    return image


def decoded(svg: str) -> list[str]:
    return [found.text for found in zxingcpp.read_barcodes(raster_of(svg))
            if found.format == zxingcpp.BarcodeFormat.QRCode]


def test_the_qr_svg_decodes_to_its_token():
    token = checkin_token(SECRET, uuid.uuid4())
    svg = qr_svg(token, "签到二维码")
    assert 'class="qr"' in svg and 'role="img"' in svg and 'aria-label="签到二维码"' in svg
    assert decoded(svg) == [token]


def test_the_qr_is_drawn_at_least_200_css_px_wide():
    css = (Path(__file__).parent.parent / "booking/web/static/app.css").read_text()
    rule = re.search(r"\.qr\s*\{([^}]*)\}", css)
    assert rule, "app.css has no .qr rule"
    width = re.search(r"(?<![-\w])width:\s*(\d+)px", rule.group(1))
    assert width and int(width.group(1)) >= 200


async def test_the_qr_on_my_bookings_decodes_to_that_bookings_token(server, http):
    course = await make_course(http, capacity=3)
    who = unique("door")
    answer = await grab(http, course["id"], who)
    assert answer.status_code == 201, answer.text
    booking_id = answer.json()["id"]
    cookies = {"booking_token": mint(SECRET, "resident", who)}
    async with httpx.AsyncClient(base_url=server, cookies=cookies, timeout=30) as client:
        page = await client.get("/me/bookings")
    assert page.status_code == 200
    card = re.search(rf'data-booking-id="{booking_id}".*?</article>', page.text, re.S)
    assert card, page.text
    (svg,) = re.findall(r'<svg[^>]*class="qr".*?</svg>', card.group(0), re.S)
    assert decoded(svg) == [checkin_token(SECRET, booking_id)]
    assert booking_of_token(SECRET, decoded(svg)[0]) == booking_id


async def test_the_api_gives_the_same_token_and_code_as_the_page_shows(http):
    """GET /v1/bookings/{id}/checkin is the page's QR in JSON: only for its own resident, and
    only while the booking is active."""
    course_id = (await make_course(http, capacity=2))["id"]
    who = unique("checkin-api")
    booking_id = (await grab(http, course_id, who)).json()["id"]
    headers = {"Authorization": f"Bearer {mint(SECRET, 'resident', who)}"}

    answer = await http.get(f"/v1/bookings/{booking_id}/checkin", headers=headers)
    assert answer.status_code == 200
    body = answer.json()
    assert booking_of_token(SECRET, body["token"]) == booking_id
    assert body["code"] == checkin_code(SECRET, booking_id)

    stranger = {"Authorization": f"Bearer {mint(SECRET, 'resident', unique('stranger'))}"}
    assert (await http.get(f"/v1/bookings/{booking_id}/checkin", headers=stranger)
            ).status_code == 404
    assert (await http.delete(f"/v1/bookings/{booking_id}", headers=headers)).status_code == 200
    gone = await http.get(f"/v1/bookings/{booking_id}/checkin", headers=headers)
    assert (gone.status_code, gone.json()["code"]) == (409, "not_active")
