"""The rush: residents who grab, hold and give seats back while a fault is under way.

Every request becomes an `Answer` (status 0 when no HTTP answer came), so that the figures can
say what was answered during the fault and over the whole run, and how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

import httpx

from booking.core.auth import mint
from booking.ops.rehearsal import address_of
from loadtest.faults.lab import Plan

REQUEST_TIMEOUT_S = 30.0  # a request still unanswered after this counts as a hang


@dataclass(slots=True)
class Answer:
    """One request of the rush: `status` 0 means no HTTP answer (`code` then names why)."""

    kind: str  # grab or cancel
    started: float  # time.monotonic()
    ended: float
    status: int
    code: str

    @property
    def label(self) -> str:
        return f"{self.status} {self.code}" if self.status else f"no answer ({self.code})"


class Rush:
    """Residents who grab hot courses, move on at `sold_out`, back off at 503, and now and then
    give a seat back, so that seats (and ledger writes) keep flowing for the whole fault."""

    def __init__(self, base_url: str, secret: str, course_ids: list[int], plan: Plan,
                 prefix: str) -> None:
        self.base_url = base_url
        self.course_ids = course_ids
        self.plan = plan
        self.residents = [f"{prefix}-{n}" for n in range(plan.residents)]
        self._tokens = {who: mint(secret, "resident", who) for who in self.residents}
        self._slots = asyncio.Semaphore(plan.connections)
        self._stop = asyncio.Event()
        self._rng = random.Random(prefix)
        self.answers: list[Answer] = []
        self.received: set[str] = set()  # booking ids clients were told about
        self._http: httpx.AsyncClient

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.plan.connections,
                              max_keepalive_connections=self.plan.connections)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=None)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits,
                                     timeout=timeout) as self._http:
            await asyncio.gather(*(self._resident(who) for who in self.residents))

    async def _resident(self, who: str) -> None:
        headers = {"Authorization": f"Bearer {self._tokens[who]}",
                   "X-Forwarded-For": address_of(who)}
        held: dict[int, str] = {}
        await asyncio.sleep(self._rng.random() * self.plan.think_s * 4)  # not all in one tick
        while not self._stop.is_set():
            free = [c for c in self.course_ids if c not in held]
            if held and (not free or self._rng.random() < self.plan.cancel_share):
                course_id, booking_id = self._rng.choice(list(held.items()))
                answer, _ = await self._send("cancel", "DELETE", f"/v1/bookings/{booking_id}",
                                             headers)
                if answer.status == 200:
                    del held[course_id]
            else:
                course_id = self._rng.choice(free)
                answer, body = await self._send("grab", "POST",
                                                f"/v1/courses/{course_id}/bookings", headers)
                if answer.status in (200, 201) and isinstance(body.get("id"), str):
                    held[course_id] = body["id"]
                    self.received.add(body["id"])
            await asyncio.sleep(self._pause(answer))

    def _pause(self, answer: Answer) -> float:
        """A short think; a little longer after a 503 or no answer (a frantic, not a DoS, crowd)."""
        if answer.status in (0, 429, 503):
            return 0.1 + self._rng.random() * 0.2
        return self._rng.random() * self.plan.think_s

    async def _send(self, kind: str, method: str, path: str,
                    headers: dict[str, str]) -> tuple[Answer, dict[str, object]]:
        body: dict[str, object] = {}
        async with self._slots:
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, headers=headers)
                status = response.status_code
                body = _json_object(response)
                code = str(body.get("code") or _success_code(kind, status, body))
            except httpx.TimeoutException as exc:
                status, code = 0, f"timeout: {type(exc).__name__}"
            except httpx.TransportError as exc:
                status, code = 0, type(exc).__name__
        answer = Answer(kind, started, time.monotonic(), status, code)
        self.answers.append(answer)
        return answer, body


def _json_object(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {"code": "not-json"}
    return body if isinstance(body, dict) else {"code": "not-an-object"}


def _success_code(kind: str, status: int, body: dict[str, object]) -> str:
    code = {("grab", 201): "created", ("grab", 200): "held",
            ("cancel", 200): "cancelled"}.get((kind, status), "?")
    if kind == "grab" and body.get("status") != "confirmed":
        code += f" (booking {body.get('status')})"  # a grab must never hand back a dead booking
    return code


async def probe_readiness(base_url: str, stop: asyncio.Event,
                          every_s: float = 0.2) -> list[tuple[float, int]]:
    """Poll `/ready` as a load balancer would: (time.monotonic(), status; 0 for no answer)."""
    seen: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=3) as client:
        while not stop.is_set():
            at = time.monotonic()
            try:
                status = (await client.get("/ready")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((at, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return seen
