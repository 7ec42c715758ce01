"""Authentication comes before anything else: every protected operation of the OpenAPI
document answers 401 to a missing or bad token and 403 to a wrong role, whatever its body,
before the body is read or validated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from conftest import SECRET, auth
from hypothesis import given, settings
from hypothesis import strategies as st

from booking.core.auth import TokenVerifier, mint
from booking.core.errors import Unauthorized

# Operations anyone may call; the payment callback proves itself with its signature instead.
PUBLIC = {"health", "ready", "metrics", "listVenues", "listCourses", "getCourse",
          "paymentCallback", "sendLoginCode", "createToken",
          "learningRecordKeys", "getRelease", "getDraw", "getDrawEntries", "getDrawResults"}
ROLES = ("resident", "venue", "operator")
SOON = int(time.time()) + 3600

BAD_TOKENS = {
    "none": None,
    "not a JWT": "not-a-token",
    "forged": jwt.encode({"sub": "x", "role": "resident", "exp": SOON},
                         "another-secret-of-thirty-two-bytes!!", algorithm="HS256"),
    "alg none": jwt.encode({"sub": "x", "role": "resident", "exp": SOON}, None,
                           algorithm="none"),
    "HS512": jwt.encode({"sub": "x", "role": "resident", "exp": SOON}, SECRET * 2,
                        algorithm="HS512"),
    "expired": jwt.encode({"sub": "x", "role": "resident", "exp": 1}, SECRET,
                          algorithm="HS256"),
    "no exp": jwt.encode({"sub": "x", "role": "resident"}, SECRET, algorithm="HS256"),
    "no sub": jwt.encode({"role": "resident", "exp": SOON}, SECRET, algorithm="HS256"),
    "no role": jwt.encode({"sub": "x", "exp": SOON}, SECRET, algorithm="HS256"),
    "venue without venue_id": jwt.encode({"sub": "x", "role": "venue", "exp": SOON}, SECRET,
                                         algorithm="HS256"),
}
# Bodies that would each be a 400 (or 413) if they were read.
BODIES = {"no body": None, "not JSON": b"{", "wrong shape": b'{"unknown": [1, 2]}'}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in ("get", "post", "patch", "delete", "put")]


def _concrete(path: str) -> str:
    """A real-looking path: ints for ids, a UUID for booking ids."""
    path = re.sub(r"\{booking_id\}", str(uuid.uuid4()), path)
    return re.sub(r"\{[a-z_]+\}", "1", path)


@pytest.fixture(scope="module")
async def openapi(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_every_operation_is_either_public_or_protected(openapi):
    protected = {op["operationId"] for _, _, op in _operations(openapi) if op.get("security")}
    everything = {op["operationId"] for _, _, op in _operations(openapi)}
    assert everything - protected == PUBLIC
    assert len(protected) >= 12


async def test_every_protected_operation_refuses_bad_tokens_before_reading_the_body(
        http, openapi):
    checked = 0
    for method, path, op in _operations(openapi):
        if not op.get("security"):
            continue
        for token_name, token in BAD_TOKENS.items():
            for body_name, body in BODIES.items():
                headers = {"Content-Type": "application/json"}
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                answer = await http.request(method, _concrete(path), content=body,
                                            headers=headers)
                where = f"{method} {path} with {token_name} token and {body_name}"
                assert answer.status_code == 401, f"{where}: {answer.status_code} {answer.text}"
                assert answer.json()["code"] == "unauthorized", where
                checked += 1
    assert checked >= 12 * len(BAD_TOKENS) * len(BODIES)


async def test_a_wrong_role_is_403_before_the_body_is_read(http, openapi):
    """Each protected operation names its roles in its security; every other role is 403."""
    for method, path, op in _operations(openapi):
        if not op.get("security"):
            continue
        refused = 0
        for role in ROLES:
            headers = {**auth(role, "someone", venue_id=1 if role == "venue" else None),
                       "Content-Type": "application/json"}
            answer = await http.request(method, _concrete(path), content=b"{", headers=headers)
            if answer.status_code == 403:
                assert answer.json()["code"] == "forbidden"
                refused += 1
            else:  # an allowed role is past the guard: its body or its lookup answers
                assert answer.status_code != 401, f"{method} {path} as {role}"
        assert refused >= 1, f"{method} {path} accepts every role"


async def test_a_token_without_expiry_is_refused(http):
    answer = await http.get("/v1/me/bookings",
                            headers={"Authorization": f"Bearer {BAD_TOKENS['no exp']}"})
    assert answer.status_code == 401
    assert "exp" in answer.json()["detail"]


# --- the plain path of TokenVerifier.verify agrees with PyJWT --------------------------------

def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """A JWT built by hand, so that any header, claim or signature can be written."""
    signing = (f"{_segment(json.dumps(header, separators=(',', ':')).encode())}."
               f"{_segment(json.dumps(claims, separators=(',', ':')).encode())}")
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}.get(header.get("alg"))
    signature = hmac.new(key, signing.encode(), digest).digest() if digest else b""
    return f"{signing}.{_segment(signature)}"


MINTED_HEADER = {"alg": "HS256", "typ": "JWT"}  # what booking.core.auth.mint writes
NOW = int(time.time())
claim_values = {
    "sub": st.one_of(st.text(max_size=4), st.integers(), st.just("a\x00b")),
    "role": st.sampled_from(["resident", "venue", "operator", "admin", 7]),
    "exp": st.one_of(st.integers(NOW - 10**6, NOW - 60), st.integers(NOW + 60, NOW + 10**6),
                     st.floats(NOW + 60, NOW + 10**6), st.just(str(NOW + 3600)),
                     st.none()),
    "venue_id": st.one_of(st.integers(-1, 3), st.none()),
    "tier": st.one_of(st.text(max_size=3), st.integers()),
    "iat": st.one_of(st.integers(NOW - 100, NOW + 10**6), st.text(max_size=2)),
    "nbf": st.integers(NOW - 100, NOW + 10**6),
    "aud": st.just("someone"),
    "iss": st.just("elsewhere"),
}


@st.composite
def tokens(draw: Any) -> str:
    """A valid minted-style token with none, one or two defects: a claim of a wrong type or
    value, a required claim missing, a claim PyJWT gives meaning to, another header, another
    key, one character changed."""
    claims: dict[str, Any] = {"sub": draw(st.text("abc", min_size=1, max_size=3)),
                              "role": draw(st.sampled_from(["resident", "operator", "venue"])),
                              "exp": draw(st.integers(NOW + 60, NOW + 10**6))}
    if claims["role"] == "venue":
        claims["venue_id"] = draw(st.integers(1, 3))
    header, key, mutate = MINTED_HEADER, SECRET.encode(), False
    for defect in draw(st.lists(st.sampled_from(["claim", "missing", "header", "key", "char"]),
                                max_size=2)):
        if defect == "claim":
            name = draw(st.sampled_from(sorted(claim_values)))
            claims[name] = draw(claim_values[name])
        elif defect == "missing" and claims:
            del claims[draw(st.sampled_from(sorted(claims)))]
        elif defect == "header":
            header = draw(st.fixed_dictionaries(
                {"alg": st.sampled_from(["HS256", "HS384", "none"])},
                optional={"typ": st.sampled_from(["JWT", "at+jwt"]), "kid": st.integers(0, 2),
                          "crit": st.just(["exp"])}))
        elif defect == "key":
            key = b"another-key-of-thirty-two-bytes!!"
        else:
            mutate = True
    token = _token(header, claims, key)
    if mutate:
        at = draw(st.integers(0, len(token) - 1))
        token = token[:at] + draw(st.sampled_from("A_-.=+/ \x00")) + token[at + 1:]
    return token


def _outcome(verify: Any, token: str) -> object:
    try:
        return msgspec.structs.asdict(verify(token))
    except Unauthorized:
        return "unauthorized"


@given(tokens())
@settings(max_examples=600, deadline=None)
def test_the_plain_path_accepts_exactly_what_pyjwt_accepts(token):
    verifier = TokenVerifier(SECRET)
    verifier.verify(mint(SECRET, "resident", "first"))  # PyJWT has accepted the minted header
    assert _outcome(verifier.verify, token) == _outcome(verifier.checked, token)


def test_a_plain_token_of_a_known_header_skips_pyjwt():
    verifier = TokenVerifier(SECRET)
    assert verifier._plain(mint(SECRET, "resident", "a")) is None  # no header known yet
    verifier.verify(mint(SECRET, "resident", "a"))
    for token in (mint(SECRET, "resident", "b", tier="senior"),
                  mint(SECRET, "venue", "v", venue_id=3), mint(SECRET, "operator", "o")):
        assert verifier._plain(token) == verifier.checked(token)


def test_a_signature_with_its_spare_bits_set_is_refused_as_pyjwt_refuses_it():
    """The last character of a signature carries 4 bits and 2 spare ones; base64 decoding
    ignores the spare ones, PyJWT refuses them set. So must the plain path."""
    verifier = TokenVerifier(SECRET)
    token = mint(SECRET, "resident", "spare-bits")
    verifier.verify(token)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for spare in (1, 2, 3):  # the same 4 bits, other spare bits
        altered = token[:-1] + alphabet[last | spare]
        if altered != token:
            assert _outcome(verifier.verify, altered) == _outcome(verifier.checked, altered) \
                == "unauthorized"
