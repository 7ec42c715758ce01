"""The fairness crowd: one Locust user per resident of the population, acting as its group does.

Entry Locust loads (`locust -f loadtest/fairness/crowd.py --plan PLAN.json`); the plan comes from
`python -m loadtest.fairness run`, which starts this for you. Each resident sends its own token
and its own address in `X-Forwarded-For` (booking.ops.rehearsal.address_of), as the release-day
kit does, so the per-address limit judges residents, not the crowd.

- normal: starts at opens_at + U(0, 10) s and waits U(0.2, 1.5) s before each request;
- slow: starts at opens_at + U(5, 60) s and waits U(3, 8) s before each request and after
  each answer;
- bot: polls from opens_at - 5 s every 0.2 s and ignores 429: in `fcfs` it grabs every wish
  still open in parallel, in a draw mode it sends its entry until one is stored.

In `fcfs` a person grabs the wishes in order, moving on at `sold_out`, until it holds its cap
(one seat without a cap); in a draw mode it enters its wishes once, retrying what was not an
answer (`not_open` after Retry-After, 429, 503, no answer) until entries close. Starts and
waits are the plan's (scaled for a short run).

What each resident tried, what it was told and every answer by kind go to
`<out>/tried-<pid>.jsonl` when the test stops: the checker measures entry capture against it
(a resident whose PUT never stored counts as not captured) and looks up every booking a client
was told about. A local run quits as soon as every resident is done.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Locust puts the current folder on sys.path; the repository root, for a run started elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gevent
from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import FastResponse
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, Runner, WorkerRunner

from booking.core.auth import mint
from booking.ops.rehearsal import address_of
from loadtest.fairness import population as populations
from loadtest.fairness.plan import Plan, read_plan
from loadtest.release_day.judges import body_of, code_of, retry_after

log = logging.getLogger("loadtest.fairness")

REQUEST_TIMEOUT_S = 10.0
MAX_RETRY_WAIT_S = 5.0  # a longer Retry-After is cut to this
MAX_TRIES = 5  # answers that were no answer (429, 503, 5xx, none) before a person gives up
ENTRY = "PUT entry"
BEFORE_OPENING = " (sent before the opening)"  # Locust's name for a poll sent too early
FINAL_GRAB = {"booked", "sold_out", "term_cap_reached", "course_cancelled", "draw_pending",
              "refused"}


@dataclass(slots=True)
class Tried:
    """One resident's run, as the client saw it; a line of tried-<pid>.jsonl."""

    resident: str
    group: str
    wishes: list[int]
    started: bool = False
    outcome: str = "not_started"  # stored | booked | closed | gave_up | nothing | not_started
    entry_id: str | None = None  # the receipt a stored entry was answered with
    bookings: list[str] = field(default_factory=list)  # booking ids the client was told about
    first_sent_s: float | None = None  # after opens_at
    stored_s: float | None = None  # when the entry was stored, after opens_at
    answers: Counter[str] = field(default_factory=Counter)  # "PUT 201", "grab 409 sold_out"

    def line(self) -> str:
        return json.dumps({"resident": self.resident, "group": self.group,
                           "wishes": self.wishes, "started": self.started,
                           "tried": bool(self.answers), "outcome": self.outcome,
                           "entry_id": self.entry_id, "bookings": self.bookings,
                           "first_sent_s": self.first_sent_s, "stored_s": self.stored_s,
                           "answers": dict(self.answers)}, separators=(",", ":"))


@dataclass(slots=True)
class Crowd:
    """This process's residents: what each tried, and how many are done."""

    tried: dict[str, Tried] = field(default_factory=dict)
    spawned: int = 0
    done: int = 0
    written: bool = False


CROWD = Crowd()
_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--plan", default="", metavar="FILE",
                        help="the run's plan, written by `python -m loadtest.fairness run`")


@functools.cache
def plan_of(path: str) -> Plan:
    return read_plan(Path(path))


@functools.cache
def members_of(path: str) -> tuple[populations.Member, ...]:
    return populations.read(Path(path)).members


@functools.cache
def secret() -> str:
    value = os.environ.get("BOOKING_SECRET", "")
    if len(value) < 32:
        raise SystemExit("loadtest.fairness: set BOOKING_SECRET (the service's) to mint tokens")
    return value


def next_number(runner: Runner) -> int:
    """Residents by user: worker i of n takes i, i + n, i + 2n, ... (one process: 0, 1, ...)."""
    stride = 1
    if isinstance(runner, WorkerRunner):
        stride = max(1, runner.environment.parsed_options.expect_workers)
    return next(_numbers) * stride + max(0, getattr(runner, "worker_index", 0))


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: str  # booked, stored, sold_out, not_open, rate_limited, unavailable, error, ...
    wait_s: float = 1.0  # Retry-After, when the answer has one
    booking_id: str | None = None
    entry_id: str | None = None


def judge_grab(response: FastResponse, course_id: int) -> tuple[Answer, str | None]:
    """A booking of that course (201, or 200: the one already held), or a documented 409."""
    status, body = response.status_code, body_of(response)
    if status in (200, 201):
        if (isinstance(body, dict) and isinstance(body.get("id"), str)
                and body.get("course_id") == course_id
                and body.get("status") in ("confirmed", "held")):
            return Answer("booked", booking_id=body["id"]), None
        return Answer("error"), f"grab answered {status} without a booking: {str(body)[:200]}"
    return _refusal(response, "grab", FINAL_GRAB)


def judge_entry(response: FastResponse, wishes: list[int]) -> tuple[Answer, str | None]:
    """The entry stored with exactly these wishes (201 new, 200 replaced), or a refusal."""
    status, body = response.status_code, body_of(response)
    if status in (200, 201):
        if (isinstance(body, dict) and isinstance(body.get("entry_id"), str)
                and body.get("wishes") == wishes):
            return Answer("stored", entry_id=body["entry_id"]), None
        return Answer("error"), f"entry answered {status} without it: {str(body)[:200]}"
    return _refusal(response, "entry", {"entry_closed", "no_draw"})


def _refusal(response: FastResponse, what: str,
             documented: set[str]) -> tuple[Answer, str | None]:
    """429 and the documented 409s are answers; no answer, a 5xx or anything else fails."""
    status, code = response.status_code, code_of(body_of(response))
    if status == 429:
        return Answer("rate_limited", retry_after(response)), None
    if status == 409 and code == "not_open":
        return Answer("not_open", retry_after(response)), None
    if status == 409 and code in documented:
        return Answer(code), None
    if status == 409 and code is not None and what == "grab":
        return Answer("refused"), None
    if status == 503:
        return Answer("unavailable", retry_after(response)), f"503 {code}"
    if status == 0:
        return Answer("error"), f"no answer: {response.error}"
    return Answer("error"), f"{what} answered {status} {str(body_of(response))[:200]}"


class Resident(FastHttpUser):
    """One resident of the population: waits for its start, acts as its group does, stops."""

    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S
    concurrency = 8  # a bot's grabs in parallel

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.plan = plan_of(environment.parsed_options.plan)
        number = next_number(environment.runner)
        members = members_of(self.plan.population)
        self.member = members[number] if number < len(members) else None
        self.rng = random.Random(f"{number}")
        self.me: Tried | None = None
        self.headers: dict[str, str] = {}
        if self.member is not None:
            self.me = Tried(self.member.id, self.member.group,
                            self.plan.wishes_of(self.member.wishes))
            CROWD.tried[self.member.id] = self.me
            self.headers = {
                "Authorization": f"Bearer {mint(secret(), 'resident', self.member.id)}",
                "X-Forwarded-For": address_of(self.member.id)}
        CROWD.spawned += 1

    @task
    def release(self) -> None:
        try:
            if self.me is not None:
                self.act(self.me)
        finally:
            CROWD.done += 1
            if CROWD.done >= self.environment.runner.target_user_count:
                quit_when_all_done(self.environment)
        raise StopUser()

    def act(self, me: Tried) -> None:
        start = self.plan.opens_at_epoch + self.plan.timings.start_after_opening(me.group,
                                                                                 self.rng)
        gevent.sleep(max(0.0, start - time.time()))
        me.started = True
        if me.group == "bot" and self.plan.is_draw:
            self.bot_enters(me)
        elif me.group == "bot":
            self.bot_grabs(me)
        elif self.plan.is_draw:
            self.enters(me)
        else:
            self.grabs(me)

    # --- people ---------------------------------------------------------------------------------

    def enters(self, me: Tried) -> None:
        """Enter the wishes once; retry only what was not an answer, until entries close."""
        tries = 0
        while time.time() < self.plan.ends_at_epoch and tries < MAX_TRIES:
            answer = self.request_entry(me)
            if answer.outcome == "stored":
                me.outcome = "stored"
                return
            if answer.outcome == "entry_closed":
                me.outcome = "closed"
                return
            if answer.outcome != "not_open":
                tries += 1
            if answer.outcome in ("not_open", "rate_limited", "unavailable"):
                gevent.sleep(min(answer.wait_s, MAX_RETRY_WAIT_S))
        me.outcome = "gave_up"

    def grabs(self, me: Tried) -> None:
        """Wishes in order, moving on at sold_out, until the cap is held."""
        cap = self.plan.term_cap or len(me.wishes)
        for course_id in me.wishes:
            tries, answer = 0, Answer("not_sent")
            while time.time() < self.plan.ends_at_epoch and tries < MAX_TRIES:
                answer = self.request_grab(me, course_id, pause=True)
                if answer.outcome in FINAL_GRAB:
                    break
                if answer.outcome != "not_open":
                    tries += 1
                if answer.outcome in ("not_open", "rate_limited", "unavailable"):
                    gevent.sleep(min(answer.wait_s, MAX_RETRY_WAIT_S))
            if len(me.bookings) >= cap or answer.outcome == "term_cap_reached":
                break
        me.outcome = "booked" if me.bookings else "nothing"

    # --- bots -----------------------------------------------------------------------------------

    def bot_enters(self, me: Tried) -> None:
        while time.time() < self.plan.ends_at_epoch:
            began = time.time()
            answer = self.request_entry(me, pause=False)
            if answer.outcome in ("stored", "entry_closed"):
                me.outcome = "stored" if answer.outcome == "stored" else "closed"
                return
            gevent.sleep(max(0.0, self.plan.timings.bot_every_s - (time.time() - began)))
        me.outcome = "gave_up"

    def bot_grabs(self, me: Tried) -> None:
        """Every wish still open, in parallel, every bot_every_s; 429 is only a reason to poll
        again."""
        open_wishes = list(me.wishes)
        while open_wishes and time.time() < self.plan.ends_at_epoch:
            began = time.time()
            calls = [gevent.spawn(self.request_grab, me, course_id, pause=False)
                     for course_id in open_wishes]
            gevent.joinall(calls)
            open_wishes = [course_id for course_id, call in zip(open_wishes, calls, strict=True)
                           if call.value is None or call.value.outcome not in FINAL_GRAB]
            gevent.sleep(max(0.0, self.plan.timings.bot_every_s - (time.time() - began)))
        me.outcome = "booked" if me.bookings else "nothing"

    # --- requests -------------------------------------------------------------------------------

    def request_entry(self, me: Tried, *, pause: bool = True) -> Answer:
        answer = self.call(me, "PUT", f"/v1/releases/{self.plan.release_id}/entry", ENTRY,
                           lambda r: judge_entry(r, me.wishes), pause, json={"wishes": me.wishes})
        if answer.entry_id is not None:
            me.entry_id = answer.entry_id
            me.stored_s = round(time.time() - self.plan.opens_at_epoch, 3)
        return answer

    def request_grab(self, me: Tried, course_id: int, *, pause: bool) -> Answer:
        answer = self.call(me, "POST", f"/v1/courses/{course_id}/bookings", "grab",
                           lambda r: judge_grab(r, course_id), pause)
        if answer.booking_id is not None and answer.booking_id not in me.bookings:
            me.bookings.append(answer.booking_id)
        return answer

    def call(self, me: Tried, method: str, path: str, name: str, judge: Any, pause: bool,
             **request: Any) -> Answer:
        """One request, with the group's pauses around it, judged and tallied."""
        if pause:
            self.pause()
        if me.first_sent_s is None:
            me.first_sent_s = round(time.time() - self.plan.opens_at_epoch, 3)
        if time.time() < self.plan.opens_at_epoch:
            name = f"{name}{BEFORE_OPENING}"
        with self.client.request(method, path, name=name, headers=self.headers,
                                 catch_response=True, **request) as response:
            answer, failure = judge(response)
            if failure is None:
                response.success()
            else:
                response.failure(failure)
            code = code_of(body_of(response)) if response.status_code >= 400 else None
            me.answers[" ".join(str(part) for part in (name.split()[0], response.status_code,
                                                        code) if part is not None)] += 1
        if pause and me.group == "slow":
            self.pause()
        return answer

    def pause(self) -> None:
        timings = self.plan.timings
        wait = timings.slow_wait if self.me and self.me.group == "slow" else timings.normal_wait
        gevent.sleep(self.rng.uniform(*wait))


def quit_when_all_done(environment: Environment) -> None:
    """A local run ends when every resident is done (a worker leaves that to the master's
    --run-time)."""
    if isinstance(environment.runner, LocalRunner):
        gevent.spawn_later(0.5, environment.runner.quit)


def write_tried(out: Path) -> Path:
    """This process's residents, one line each, replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"tried-{os.getpid()}.jsonl"
    partial = target.with_suffix(".part")
    partial.write_text("".join(tried.line() + "\n" for tried in CROWD.tried.values()))
    partial.replace(target)
    CROWD.written = True
    return target


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or not environment.parsed_options.plan:
        return
    plan = plan_of(environment.parsed_options.plan)
    environment.host = environment.host or plan.base_url
    secret()


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_: Any) -> None:
    if environment.parsed_options.plan and not _is_master(environment):
        path = write_tried(Path(plan_of(environment.parsed_options.plan).out))
        told = Counter(tried.outcome for tried in CROWD.tried.values())
        cpu = os.times()
        log.info("fairness crowd: %d residents written to %s (%s); this Locust process used "
                 "%.1f CPU s", len(CROWD.tried), path,
                 ", ".join(f"{k} {v}" for k, v in sorted(told.items())), cpu.user + cpu.system)


def _is_master(environment: Environment) -> bool:
    return environment.runner is not None and not isinstance(
        environment.runner, (LocalRunner, WorkerRunner))
