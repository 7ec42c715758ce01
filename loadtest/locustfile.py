"""Release day: thousands of residents press "Book" in the same second.

Why this exists: DESIGN.md promises every resident a fast, honest answer and that no seat is
ever sold twice or lost. This Locust scenario rehearses an opening against a running service
on 127.0.0.1. Every user is spawned before the opening and waits for `opens_at`, so the first
grabs land together; then each behaves like a person: skewed wishes (most aim at the hottest
tenth), the next wish on `sold_out`, Retry-After on `not_open`, a few cancel, many reload the
course list. On a paid course a seat is a hold: most pay it (a signed callback, as the payment
provider sends), a few let it lapse or cancel it. Some answered `sold_out` join that course's
waitlist and later look at their place (paying the hold a promotion gives them) or leave; some
holders swap their seat for another course. Every answer's body is checked, every booking id a
client was told about goes to `<results>/received-<pid>.txt`, and the run ends with a verdict
(failure ratio, p99 and `booking check` on Postgres and Redis, which also proves the holds,
waitlists and payments) that decides the exit code. Commands: loadtest/README.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import FastResponse
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, Runner, WorkerRunner

from booking.core.auth import mint

log = logging.getLogger("loadtest")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
HOT_SHARE = 0.85  # chance that each wish is one of the hottest tenth of the release
WISHES = (3, 5)  # how many courses one resident is ready to try, at least and at most
CANCEL_SHARE = 0.10  # residents who give their seat back after getting one
REFRESH_SHARE = 0.6  # chance of reloading the course list between two actions
THINK_S = (0.3, 2.0)  # a person's pause between two actions during the rush
LINGER_S = (3.0, 8.0)  # pause between two reloads once the rush is over for someone
MAX_RETRY_WAIT_S = 5.0  # a longer Retry-After is cut to this
MAX_ATTEMPTS = 5  # grabs of one course answered not_open, 503 or nothing, before moving on
REQUEST_TIMEOUT_S = 10.0  # no answer within this is a failure
SETTLE_S = 3.0  # lets grabs still in flight at the stop land before the checker looks
WORKER_FILES_WAIT_S = 30.0  # how long the master waits for the workers' received files
CHECK_TIMEOUT_S = 300.0
DOMAIN_409 = {"sold_out", "not_open", "course_cancelled"}
RETRIED = {"not_open", "unavailable", "error"}
WAITLIST_409 = {"seats_available", "already_booked", "course_cancelled"}
SWAP_409 = {"sold_out", "not_open", "already_booked", "same_course", "not_active",
            "course_cancelled", "cancel_deadline_passed"}
PAYMENT_OUTCOMES = {"confirmed", "refund_due"}
REPEAT_PAYMENT_SHARE = 0.1  # callbacks the provider sends twice: the same answer is due
SIGNATURE_HEADER = "X-Booking-Signature"

T = TypeVar("T")
Judged = tuple[T, str | None]  # what an answer means, and why it is a failure (None: success)

RECEIVED: set[str] = set()  # booking ids this process was told about (201 and 200 answers)


class SetupError(Exception):
    """The run cannot start as asked; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Options:
    release: Path
    residents: int
    results: Path
    max_fail_ratio: float
    max_p99_ms: float
    check: bool
    pay_share: float
    lapse_share: float
    waitlist_share: float
    leave_share: float
    swap_share: float

    @classmethod
    def of(cls, environment: Environment) -> Options:
        o = environment.parsed_options
        return cls(Path(o.release), o.residents, Path(o.results), o.max_fail_ratio,
                   o.max_p99_ms, o.check, o.pay_share, o.lapse_share, o.waitlist_share,
                   o.leave_share, o.swap_share)

    def shares_problem(self) -> str | None:
        shares = {"--pay-share": self.pay_share, "--lapse-share": self.lapse_share,
                  "--waitlist-share": self.waitlist_share, "--leave-share": self.leave_share,
                  "--swap-share": self.swap_share}
        for flag, share in shares.items():
            if not 0.0 <= share <= 1.0:
                return f"{flag} must be between 0 and 1"
        if self.pay_share + self.lapse_share > 1.0:
            return "--pay-share plus --lapse-share must not exceed 1"
        return None


@dataclass(frozen=True, slots=True)
class Release:
    base_url: str
    opens_at_epoch: float
    course_ids: list[int]  # hottest first
    prices: dict[int, int]  # cents, for the paid courses only

    def price(self, course_id: int) -> int:
        return self.prices.get(course_id, 0)

    @property
    def hot(self) -> list[int]:
        return self.course_ids[:self._hot_count]

    @property
    def cold(self) -> list[int]:
        return self.course_ids[self._hot_count:]

    @property
    def _hot_count(self) -> int:
        return max(1, len(self.course_ids) // 10)


@dataclass(slots=True)
class RunState:
    """What the master (or the single local process) remembers between events."""

    workers: int = 0
    verdict: str = ""


STATE = RunState()


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--release", default="loadtest/results/release.json", metavar="FILE",
                        help="release JSON written by `booking release`")
    parser.add_argument("--residents", type=int, default=2000, metavar="N",
                        help="distinct residents lt-0 .. lt-<N-1> (default 2000)")
    parser.add_argument("--results", default="loadtest/results", metavar="DIR",
                        help="where received-<pid>.txt files go (default loadtest/results)")
    parser.add_argument("--max-fail-ratio", type=float, default=0.01,
                        help="fail the run above this failure ratio (default 0.01)")
    parser.add_argument("--max-p99-ms", type=float, default=1000,
                        help="fail the run above this total p99 in ms (default 1000)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="run `booking check` on the received ids at the end (default on)")
    parser.add_argument("--pay-share", type=float, default=0.8, metavar="SHARE",
                        help="holds of paid courses the resident pays (default 0.8)")
    parser.add_argument("--lapse-share", type=float, default=0.1, metavar="SHARE",
                        help="holds left to lapse (default 0.1); the rest are cancelled")
    parser.add_argument("--waitlist-share", type=float, default=0.3, metavar="SHARE",
                        help="chance that a resident answered sold_out joins that course's "
                             "waitlist, if on none yet (default 0.3)")
    parser.add_argument("--leave-share", type=float, default=0.2, metavar="SHARE",
                        help="chance that a waiting resident leaves at a later look instead of "
                             "checking their place (default 0.2)")
    parser.add_argument("--swap-share", type=float, default=0.1, metavar="SHARE",
                        help="residents with a seat who try to swap it for another course "
                             "(default 0.1)")


@functools.cache
def load_release(path: Path) -> Release:
    try:
        data = json.loads(path.read_text())
        price = int(data.get("price_cents") or 0)
        release = Release(str(data["base_url"]), float(data["opens_at_epoch"]),
                          [int(course_id) for course_id in data["course_ids"]],
                          {int(course_id): price for course_id in data.get("paid_course_ids", [])})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SetupError(f"cannot read the release {path} ({exc}); write one with "
                         "`booking release --out FILE`") from exc
    if not release.course_ids:
        raise SetupError(f"the release {path} has no courses")
    if release.prices and price < 1:
        raise SetupError(f"the release {path} has paid courses but no price_cents")
    return release


def require_loopback(url: str) -> None:
    if urlsplit(url).hostname not in LOOPBACK_HOSTS:
        raise SetupError(f"{url} is not on this machine; load tests target 127.0.0.1 only")


def booking_secret() -> str:
    secret = os.environ.get("BOOKING_SECRET", "")
    if len(secret) < 32:
        raise SetupError("set BOOKING_SECRET (the service's, at least 32 characters) to mint "
                         "resident tokens")
    return secret


def payment_secret() -> str:
    secret = os.environ.get("BOOKING_PAYMENT_SECRET", "")
    if len(secret) < 32:
        raise SetupError("set BOOKING_PAYMENT_SECRET (the service's, at least 32 characters) to "
                         "sign payment callbacks, or pass --pay-share 0")
    return secret


def signed_payment(booking_id: str, amount_cents: int) -> tuple[bytes, dict[str, str]]:
    """A callback as the payment provider sends it: a new provider reference, and the raw body
    signed with HMAC-SHA256 under BOOKING_PAYMENT_SECRET."""
    body = json.dumps({"provider_ref": f"lt-{uuid.uuid4().hex}", "booking_id": booking_id,
                       "amount_cents": amount_cents, "status": "paid"}).encode()
    digest = hmac.new(payment_secret().encode(), body, hashlib.sha256).hexdigest()
    return body, {SIGNATURE_HEADER: f"sha256={digest}", "Content-Type": "application/json"}


@functools.cache
def bearer(resident_id: str) -> dict[str, str]:
    """Headers for one resident, minted the first time they are needed."""
    return {"Authorization": f"Bearer {mint(booking_secret(), 'resident', resident_id)}"}


def pick_wishes(release: Release, rng: random.Random) -> list[int]:
    """Courses a resident will try, in order; each is one of the hottest tenth at HOT_SHARE."""
    hot, cold = list(release.hot), list(release.cold)
    wishes = []
    for _ in range(rng.randint(*WISHES)):
        pool = hot if hot and (rng.random() < HOT_SHARE or not cold) else cold
        if not pool:
            break
        wishes.append(pool.pop(rng.randrange(len(pool))))
    return wishes


_users_started = itertools.count()


def next_user_number(runner: Runner) -> int:
    """Numbers users across workers: worker i of n gives i, i + n, i + 2n, ..."""
    stride = 1
    if isinstance(runner, WorkerRunner):
        stride = max(1, runner.environment.parsed_options.expect_workers)
    return next(_users_started) * stride + max(0, runner.worker_index)


# Judging answers: each judge says what an answer means and why it is a failure, if it is one.

@dataclass(frozen=True, slots=True)
class Seat:
    booking_id: str
    course_id: int
    held: bool  # a hold of a paid course, waiting for its payment


@dataclass(frozen=True, slots=True)
class GrabAnswer:
    outcome: str  # booked, sold_out, not_open, course_cancelled, refused, unavailable, error
    seat: Seat | None = None
    retry_after_s: float = 1.0


@dataclass(frozen=True, slots=True)
class PaymentAnswer:
    outcome: str  # confirmed, refund_due, or error
    booking_status: str = ""


def body_of(response: FastResponse) -> Any:
    try:
        return response.json()
    except (ValueError, TypeError, AttributeError):
        return None


def code_of(body: Any) -> str | None:
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def retry_after(response: FastResponse) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After") or 1))
    except ValueError:
        return 1.0


def no_answer(response: FastResponse) -> str | None:
    if response.status_code == 0:
        return f"no answer: {response.error}"
    if response.status_code >= 500:
        return f"{response.status_code} {str(body_of(response))[:200]}"
    return None


def seat_in(body: Any, course_id: int, paid: bool, *, new: bool) -> Seat | None:
    """The booking in an answer, if the course can give it: a new booking of a paid course is a
    hold with `expires_at`, of a free course confirmed; one held already (200) may be paid."""
    if not (isinstance(body, dict) and isinstance(body.get("id"), str)
            and body.get("course_id") == course_id):
        return None
    status = body.get("status")
    if paid and status == "held" and isinstance(body.get("expires_at"), str):
        return Seat(body["id"], course_id, held=True)
    if status == "confirmed" and (not paid or not new):
        return Seat(body["id"], course_id, held=False)
    return None


def judge_grab(response: FastResponse, course_id: int, paid: bool) -> Judged[GrabAnswer]:
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        if status == 503:
            return GrabAnswer("unavailable", retry_after_s=retry_after(response)), failure
        return GrabAnswer("error"), failure
    if status in (200, 201):
        if seat := seat_in(body, course_id, paid, new=status == 201):
            return GrabAnswer("booked", seat), None
        wanted = "held" if paid else "confirmed"
        return GrabAnswer("error"), f"{status} without a {wanted} booking: {str(body)[:200]}"
    code = code_of(body)
    if status == 409 and code is not None:
        outcome = code if code in DOMAIN_409 else "refused"
        return GrabAnswer(outcome, retry_after_s=retry_after(response)), None
    return GrabAnswer("error"), f"{status} {str(body)[:200]}"


def seat_after(seat: Seat, booking_status: str) -> Seat | None:
    """The seat as a payment answer describes its booking; None once it holds no seat."""
    if booking_status not in ("confirmed", "held"):
        return None
    return Seat(seat.booking_id, seat.course_id, held=booking_status == "held")


def judge_cancel(response: FastResponse, seat: Seat) -> Judged[bool]:
    """A cancelled booking; a hold may have lapsed first (then it answers `expired`)."""
    body = body_of(response)
    if failure := no_answer(response):
        return False, failure
    ended = {"cancelled", "expired"} if seat.held else {"cancelled"}
    if (response.status_code == 200 and isinstance(body, dict)
            and body.get("id") == seat.booking_id and body.get("status") in ended):
        return True, None
    return False, f"cancel answered {response.status_code} {str(body)[:200]}"


def judge_course_list(response: FastResponse) -> Judged[dict[int, int]]:
    """Seats left by course id, from one page of GET /v1/courses."""
    body = body_of(response)
    if failure := no_answer(response):
        return {}, failure
    items = body.get("items") if isinstance(body, dict) else None
    if (response.status_code != 200 or not isinstance(items, list) or "next_offset" not in body
            or not all(isinstance(c, dict) and "id" in c and "seats_left" in c for c in items)):
        return {}, f"course list answered {response.status_code} {str(body)[:200]}"
    return {c["id"]: c["seats_left"] for c in items}, None


def judge_my_bookings(response: FastResponse, held: str | None) -> Judged[list[dict[str, Any]]]:
    body = body_of(response)
    if failure := no_answer(response):
        return [], failure
    if response.status_code != 200 or not isinstance(body, list):
        return [], f"my bookings answered {response.status_code} {str(body)[:200]}"
    bookings = [b for b in body if isinstance(b, dict)]
    if held is not None and held not in {b.get("id") for b in bookings}:
        return bookings, f"booking {held} missing from /v1/me/bookings"
    return bookings, None


def judge_payment(response: FastResponse, booking_id: str,
                  first: str | None = None) -> Judged[PaymentAnswer]:
    """`confirmed` or `refund_due` (the hold lapsed, or a twin user of the same resident ended
    or paid it); a repeat of a callback must get the first answer again. 401 and 409
    `amount_mismatch` are failures here: the callback is signed with the service's secret and
    pays the published price."""
    body = body_of(response)
    if failure := no_answer(response):
        return PaymentAnswer("error"), failure
    outcome = body.get("outcome") if isinstance(body, dict) else None
    if (response.status_code != 200 or outcome not in PAYMENT_OUTCOMES
            or body.get("booking_id") != booking_id):
        return PaymentAnswer("error"), f"payment answered {response.status_code} {str(body)[:200]}"
    if first is not None and outcome != first:
        return PaymentAnswer("error"), f"a repeated callback answered {outcome}, first {first}"
    return PaymentAnswer(outcome, str(body.get("booking_status"))), None


def place_in(body: Any, course_id: int) -> bool:
    position = body.get("position") if isinstance(body, dict) else None
    return (isinstance(position, int) and position >= 1 and body.get("course_id") == course_id
            and body.get("status") == "waiting")


def judge_join(response: FastResponse, course_id: int) -> Judged[str]:
    """`waiting` (201, or 200 for a twin), or a documented 409 code."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if status in (200, 201) and place_in(body, course_id):
        return "waiting", None
    if status == 409 and code_of(body) in WAITLIST_409:
        return str(code_of(body)), None
    return "error", f"waitlist join answered {status} {str(body)[:200]}"


def judge_place(response: FastResponse, course_id: int) -> Judged[str]:
    """`waiting`, or `gone` (404): promoted, or the place was cleared."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if status == 200 and place_in(body, course_id):
        return "waiting", None
    if status == 404 and code_of(body) == "not_found":
        return "gone", None
    return "error", f"waitlist place answered {status} {str(body)[:200]}"


def judge_leave(response: FastResponse, course_id: int) -> Judged[str]:
    """`left`, or `gone` (404): promoted or cleared a moment before."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return "error", failure
    if (status == 200 and isinstance(body, dict) and body.get("course_id") == course_id
            and body.get("status") == "left" and body.get("position") is None):
        return "left", None
    if status == 404 and code_of(body) == "not_found":
        return "gone", None
    return "error", f"waitlist leave answered {status} {str(body)[:200]}"


def judge_swap(response: FastResponse, old: Seat, target: int,
               paid: bool) -> Judged[Seat | None]:
    """The new booking (201), or None: a documented 409, and the old booking is kept."""
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        return None, failure
    if status == 201:
        seat = seat_in(body, target, paid, new=True)
        if seat is not None and seat.booking_id != old.booking_id:
            return seat, None
    elif status == 409 and code_of(body) in SWAP_409:
        return None, None
    return None, f"swap answered {status} {str(body)[:200]}"


class Resident(FastHttpUser):
    """One resident on release day: waits for the opening, tries their wishes, then lingers."""

    wait_time = between(*LINGER_S)
    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.options = Options.of(environment)
        number = next_user_number(environment.runner)
        self.rng = random.Random(number)
        self.resident_id = f"lt-{number % max(1, self.options.residents)}"
        self.headers: dict[str, str] = {}
        self.wishes: list[int] = []
        self.seat: Seat | None = None
        self.cancelled = False
        self.rushed = False
        self.waiting: int | None = None  # the course whose waitlist this resident is on
        self.seen: dict[int, int] = {}  # seats left by course, from the last course lists

    @property
    def release(self) -> Release:
        return load_release(self.options.release)  # cached; on_start made sure it loads

    def on_start(self) -> None:
        try:
            require_loopback(self.host)
            release = self.release
            self.headers = bearer(self.resident_id)
            if release.prices and self.options.pay_share > 0:
                payment_secret()
        except SetupError as exc:
            log.error("release-day user cannot start: %s", exc)
            raise StopUser() from exc
        self.wishes = pick_wishes(release, self.rng)
        gevent.sleep(max(0.0, release.opens_at_epoch - time.time()))  # the shared start

    @task
    def release_day(self) -> None:
        if self.rushed:
            self.linger()
        else:
            self.rushed = True
            self.rush()

    def rush(self) -> None:
        """Try the wishes in order until one gives a seat; then deal with that seat."""
        for course_id in self.wishes:
            if self.try_course(course_id):
                break
            self.between_actions()
        if self.seat is None:
            return
        self.think()
        self.after_booking()

    def try_course(self, course_id: int) -> bool:
        """Grab; on sold_out maybe join the waitlist, and grab at once if a seat came free."""
        outcome = self.grab(course_id)
        if outcome == "booked":
            return True
        if (outcome != "sold_out" or self.waiting is not None
                or self.rng.random() >= self.options.waitlist_share):
            return False
        return self.join_waitlist(course_id) == "seats_available" and (
            self.grab(course_id) == "booked")

    def after_booking(self) -> None:
        """Maybe swap the seat; then settle a hold, or cancel, or look the booking up."""
        if self.rng.random() < self.options.swap_share:
            self.swap()
            self.think()
        if self.seat is not None and self.seat.held:
            self.settle_hold(self.seat)
        elif self.rng.random() < CANCEL_SHARE:
            self.cancel()
        else:
            self.my_bookings()

    def settle_hold(self, seat: Seat) -> None:
        """Pay (most), let the hold lapse (the sweeper frees the seat), or cancel it."""
        draw = self.rng.random()
        if draw < self.options.pay_share:
            self.pay(seat)
            self.my_bookings()
        elif draw >= self.options.pay_share + self.options.lapse_share:
            self.cancel()

    def linger(self) -> None:
        """Reload the list; look at a waitlist place; without a seat, grab a wished one that
        came back (and settle it, if it is a hold)."""
        seats = self.course_list()
        if self.waiting is not None:
            self.look_at_place(self.waiting)
        if self.seat is None and not self.cancelled:
            freed = [course_id for course_id in self.wishes if seats.get(course_id, 0) > 0]
            if freed and self.grab(freed[0]) == "booked" and self.seat and self.seat.held:
                self.think()
                self.settle_hold(self.seat)

    def look_at_place(self, course_id: int) -> None:
        """Leave, or check the place; a place gone may be a promotion, to be paid."""
        if self.rng.random() < self.options.leave_share:
            outcome = self.call("DELETE", f"/v1/courses/{course_id}/waitlist/me",
                                "/v1/courses/[id]/waitlist/me",
                                functools.partial(judge_leave, course_id=course_id))
        else:
            outcome = self.call("GET", f"/v1/courses/{course_id}/waitlist/me",
                                "/v1/courses/[id]/waitlist/me",
                                functools.partial(judge_place, course_id=course_id))
        if outcome in ("left", "gone"):
            self.waiting = None
        if outcome == "gone":
            self.take_promotion(course_id)

    def take_promotion(self, course_id: int) -> None:
        """A promoted resident finds the booking in their list; a hold there gets paid."""
        for booking in self.my_bookings():
            if (booking.get("course_id") == course_id and booking.get("status") == "held"
                    and isinstance(booking.get("id"), str)):
                RECEIVED.add(booking["id"])
                if self.rng.random() < self.options.pay_share:
                    self.pay(Seat(booking["id"], course_id, held=True))

    def grab(self, course_id: int) -> str:
        """The grab's outcome: booked, or why not (after retrying not_open and 503)."""
        judge = functools.partial(judge_grab, course_id=course_id,
                                  paid=self.release.price(course_id) > 0)
        for _ in range(MAX_ATTEMPTS):
            answer = self.call("POST", f"/v1/courses/{course_id}/bookings",
                               "/v1/courses/[id]/bookings", judge)
            if answer.seat is not None:
                self.seat = answer.seat
                RECEIVED.add(answer.seat.booking_id)
                return "booked"
            if answer.outcome not in RETRIED:
                return answer.outcome
            gevent.sleep(min(answer.retry_after_s, MAX_RETRY_WAIT_S) + self.rng.uniform(0, 0.5))
        return "gave_up"

    def join_waitlist(self, course_id: int) -> str:
        outcome = self.call("POST", f"/v1/courses/{course_id}/waitlist",
                            "/v1/courses/[id]/waitlist",
                            functools.partial(judge_join, course_id=course_id))
        if outcome == "waiting":
            self.waiting = course_id
        return outcome

    def pay(self, seat: Seat) -> None:
        """The provider's callback for a hold (sometimes sent twice); keeps what it says of
        the seat this resident holds."""
        body, headers = signed_payment(seat.booking_id, self.release.price(seat.course_id))
        answer = self.call("POST", "/v1/payments/callback", "/v1/payments/callback",
                           lambda r: judge_payment(r, seat.booking_id), headers=headers,
                           data=body)
        if answer.outcome != "error" and self.rng.random() < REPEAT_PAYMENT_SHARE:
            self.call("POST", "/v1/payments/callback", "/v1/payments/callback (repeat)",
                      lambda r: judge_payment(r, seat.booking_id, answer.outcome),
                      headers=headers, data=body)
        if self.seat == seat and answer.outcome != "error":
            self.seat = seat_after(seat, answer.booking_status)

    def swap(self) -> None:
        """Trade the seat for one in another course, one that showed free seats if any."""
        old = self.seat
        target = self.swap_target()
        if old is None or target is None:
            return
        judge = functools.partial(judge_swap, old=old, target=target,
                                  paid=self.release.price(target) > 0)
        new = self.call("POST", f"/v1/bookings/{old.booking_id}/swap", "/v1/bookings/[id]/swap",
                        judge, json={"course_id": target})
        if new is not None:
            RECEIVED.add(new.booking_id)
            self.seat = new

    def swap_target(self) -> int | None:
        held = self.seat.course_id if self.seat else None
        others = [c for c in self.release.course_ids if c != held]
        free = [c for c in others if self.seen.get(c, 0) > 0]
        pool = free or others
        return self.rng.choice(pool) if pool else None

    def cancel(self) -> None:
        seat = self.seat
        if seat is not None and self.call("DELETE", f"/v1/bookings/{seat.booking_id}",
                                          "/v1/bookings/[id]", lambda r: judge_cancel(r, seat)):
            self.seat, self.cancelled = None, True

    def my_bookings(self) -> list[dict[str, Any]]:
        held = self.seat.booking_id if self.seat else None
        return self.call("GET", "/v1/me/bookings", "/v1/me/bookings",
                         lambda r: judge_my_bookings(r, held))

    def course_list(self) -> dict[int, int]:
        seats = self.call("GET", "/v1/courses?limit=50&offset=0", "/v1/courses",
                          judge_course_list)
        self.seen.update(seats)
        return seats

    def call(self, method: str, path: str, name: str,
             judge: Callable[[FastResponse], Judged[T]], **request: Any) -> T:
        """One request, judged; `request` may give `headers` (instead of the resident's
        token), `json` or `data`."""
        request.setdefault("headers", self.headers)
        with self.client.request(method, path, name=name, catch_response=True,
                                 **request) as response:
            meaning, failure = judge(response)
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        return meaning

    def think(self) -> None:
        gevent.sleep(self.rng.uniform(*THINK_S))

    def between_actions(self) -> None:
        self.think()
        if self.rng.random() < REFRESH_SHARE:
            self.course_list()


# The run's life: prepare (master or local), write received ids (every process with users),
# judge the run at quitting (master or local).

def is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def is_master(environment: Environment) -> bool:
    return isinstance(environment.runner, MasterRunner)


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    if is_worker(environment) or environment.parsed_options is None:
        return  # a worker gets its options from the master with the first spawn
    try:
        prepare(environment)
    except SetupError as exc:
        sys.exit(f"loadtest: {exc}")


def prepare(environment: Environment) -> None:
    """Fail fast on what would spoil the run, and clear the last run's received files."""
    options, parsed = Options.of(environment), environment.parsed_options
    release = load_release(options.release)
    environment.host = environment.host or release.base_url
    require_loopback(environment.host)
    if parsed.headless and not parsed.run_time:
        raise SetupError("give --run-time (e.g. 60s): load tests are bounded in time")
    if problem := options.shares_problem():
        raise SetupError(problem)
    if not is_master(environment):
        booking_secret()
        if release.prices and options.pay_share > 0:
            payment_secret()
    if options.check:
        require_checker_stores()
    options.results.mkdir(parents=True, exist_ok=True)
    for stale in received_files(options.results):
        stale.unlink()
    warn_if_late(release, parsed.num_users, parsed.spawn_rate)


def require_checker_stores() -> None:
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    data_dir = Path(os.environ.get("BOOKING_DATA_DIR", ".booking"))
    if not (data_dir / "postgres").is_dir():
        raise SetupError(f"`booking check` needs the service's stores: no {data_dir}/postgres; "
                         "set BOOKING_DATA_DIR to the service's .booking folder, or "
                         "DATABASE_URL and REDIS_URL, or pass --no-check")


def warn_if_late(release: Release, users: int | None, spawn_rate: float | None) -> None:
    lead_s = release.opens_at_epoch - time.time()
    spawn_s = (users or 0) / spawn_rate if spawn_rate else 0.0
    if lead_s < spawn_s:
        log.warning("sales open in %.0f s but spawning takes %.0f s: late users will not share "
                    "the opening second; prepare a release that opens later", lead_s, spawn_s)


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    if is_master(environment):
        STATE.workers = environment.runner.worker_count
    elif not environment.host:  # a worker: the release names the service
        environment.host = load_release(Options.of(environment).release).base_url


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_: Any) -> None:
    if not is_master(environment):
        write_received(Options.of(environment).results)


def write_received(results: Path) -> Path:
    """One file per process, replaced whole, so workers never clash or leave half a file."""
    results.mkdir(parents=True, exist_ok=True)
    target = results / f"received-{os.getpid()}.txt"
    partial = target.with_suffix(".part")
    partial.write_text("".join(f"{booking_id}\n" for booking_id in sorted(RECEIVED)))
    partial.replace(target)
    return target


@events.quitting.add_listener
def on_quitting(environment: Environment, **_: Any) -> None:
    if is_worker(environment) or environment.parsed_options is None:
        return
    options = Options.of(environment)
    if not is_master(environment):
        environment.runner.stop()  # Ctrl-C lands here with users still running
        write_received(options.results)
    problems = threshold_problems(environment, options)
    if is_master(environment):
        problems += missing_worker_files(options.results, STATE.workers)
    if options.check:
        problems += checker_problems(options.results)
    environment.process_exit_code = 1 if problems else 0
    STATE.verdict = verdict_line(environment, options, problems)
    log.info(STATE.verdict)


@events.quit.add_listener
def on_quit(**_: Any) -> None:
    if STATE.verdict:
        print(STATE.verdict, flush=True)  # the last line of the run, under Locust's tables


def received_files(results: Path) -> list[Path]:
    return sorted(results.glob("received-*.txt"))


def missing_worker_files(results: Path, workers: int) -> list[str]:
    """Workers write their files when told to quit; the master quits right after telling."""
    deadline = time.monotonic() + WORKER_FILES_WAIT_S
    while len(received_files(results)) < workers:
        if time.monotonic() > deadline:
            found = len(received_files(results))
            return [f"only {found} of {workers} workers wrote received ids to {results}"]
        gevent.sleep(0.2)
    return []


def threshold_problems(environment: Environment, options: Options) -> list[str]:
    total = environment.stats.total
    p99 = total.get_response_time_percentile(0.99) or 0
    problems = []
    if total.num_requests == 0:
        problems.append("no request was made")
    if total.fail_ratio > options.max_fail_ratio:
        problems.append(f"failure ratio {total.fail_ratio:.2%} > {options.max_fail_ratio:.2%}")
    if p99 > options.max_p99_ms:
        problems.append(f"p99 {p99:.0f} ms > {options.max_p99_ms:.0f} ms")
    if environment.runner.exceptions:
        problems.append(f"{len(environment.runner.exceptions)} kind(s) of exception in users")
    return problems


def checker_problems(results: Path) -> list[str]:
    """Runs `booking check` on every received file; its report goes to the log."""
    gevent.sleep(SETTLE_S)
    files = [str(path) for path in received_files(results)]
    command = [sys.executable, "-m", "booking", "check", "--received", *files]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"booking check did not finish: {exc}"]
    log.info("booking check --received %s/received-*.txt:\n%s", results,
             (done.stdout + done.stderr).strip())
    return [] if done.returncode == 0 else [f"booking check exited {done.returncode}"]


def verdict_line(environment: Environment, options: Options, problems: list[str]) -> str:
    total = environment.stats.total
    figures = (f"{total.num_requests} requests, {total.fail_ratio:.2%} failed, "
               f"p50 {total.get_response_time_percentile(0.5) or 0:.0f} ms, "
               f"p99 {total.get_response_time_percentile(0.99) or 0:.0f} ms")
    checked = ", booking check clean" if options.check else ", not checked (--no-check)"
    if problems:
        return f"release-day verdict: FAIL ({'; '.join(problems)}): {figures}"
    return f"release-day verdict: PASS: {figures}{checked}"
