"""Authentication comes before anything else: every protected operation of the OpenAPI
document answers 401 to a missing or bad token and 403 to a wrong role, whatever its body,
before the body is read or validated."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from conftest import SECRET, auth

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
