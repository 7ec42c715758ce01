"""The resident: waits for the opening, tries their wishes, then acts like a person.

Most wish for the hottest tenth, try the next wish on `sold_out`, wait for `Retry-After` on
`not_open`; a hold of a paid course is paid (a signed callback, as the provider sends), left to
lapse or cancelled; some join a waitlist, look at their place or leave it; some swap their seat.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
from locust import FastHttpUser, between, task
from locust.contrib.fasthttp import FastResponse
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import Runner, WorkerRunner

from booking.core.auth import mint
from booking.core.signing import signed_headers
from booking.ops.rehearsal import Release, address_of
from loadtest.release_day.judges import (
    Judged,
    Seat,
    T,
    judge_cancel,
    judge_course_list,
    judge_grab,
    judge_join,
    judge_leave,
    judge_my_bookings,
    judge_payment,
    judge_place,
    judge_swap,
    seat_after,
)
from loadtest.release_day.options import (
    Options,
    SetupError,
    booking_secret,
    payment_secret,
    release_of,
    require_loopback,
)
from loadtest.release_day.received import RECEIVED

log = logging.getLogger("loadtest")

HOT_SHARE = 0.85  # chance that each wish is one of the hottest tenth of the release
WISHES = (3, 5)  # how many courses one resident is ready to try, at least and at most
CANCEL_SHARE = 0.10  # residents who give their seat back after getting one
REFRESH_SHARE = 0.6  # chance of reloading the course list between two actions
THINK_S = (0.3, 2.0)  # a person's pause between two actions during the rush
LINGER_S = (3.0, 8.0)  # pause between two reloads once the rush is over for someone
MAX_RETRY_WAIT_S = 5.0  # a longer Retry-After is cut to this
MAX_ATTEMPTS = 5  # grabs of one course answered not_open, 503 or nothing, before moving on
REQUEST_TIMEOUT_S = 10.0  # no answer within this is a failure
RETRIED = {"not_open", "unavailable", "error"}  # grab outcomes worth another try of the course
REPEAT_PAYMENT_SHARE = 0.1  # callbacks the provider sends twice: the same answer is due


def signed_payment(booking_id: str, amount_cents: int) -> tuple[bytes, dict[str, str]]:
    """A callback as the payment provider sends it: a new provider reference, and the raw body
    signed under BOOKING_PAYMENT_SECRET."""
    body = json.dumps({"provider_ref": f"lt-{uuid.uuid4().hex}", "booking_id": booking_id,
                       "amount_cents": amount_cents, "status": "paid"}).encode()
    return body, signed_headers(payment_secret(), body)


@functools.cache
def bearer(resident_id: str) -> dict[str, str]:
    """Headers for one resident, minted the first time they are needed: the token, and the
    resident's own client address in `X-Forwarded-For`, as a load balancer in front of the
    service sends it (the service trusts it from FORWARDED_ALLOW_IPS, 127.0.0.1 by default).
    Residents come from many carrier addresses, so the per-address rate limit must not take
    the whole simulated crowd, all from 127.0.0.1, for one abuser."""
    return {"Authorization": f"Bearer {mint(booking_secret(), 'resident', resident_id)}",
            "X-Forwarded-For": address_of(resident_id)}


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
        return release_of(self.options.release)  # cached; on_start made sure it loads

    def on_start(self) -> None:
        try:
            require_loopback(self.host)
            release = self.release
            self.headers = bearer(self.resident_id)
            if release.paid_course_ids and self.options.pay_share > 0:
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
