"""Release day: thousands of residents press "Book" in the same second.

Why this exists: DESIGN.md promises every resident a fast, honest answer and that no seat is
ever sold twice or lost. This Locust scenario rehearses an opening against a running service
on 127.0.0.1. Every user is spawned before the opening and waits for `opens_at`, so the first
grabs land together; then each behaves like a person: skewed wishes (most aim at the hottest
tenth), the next wish on `sold_out`, Retry-After on `not_open`, a few cancel, many reload the
course list. Every answer's body is checked, every booking id a client was told about goes to
`<results>/received-<pid>.txt`, and the run ends with a verdict (failure ratio, p99 and
`booking check` on Postgres and Redis) that decides the exit code. Commands: loadtest/README.md.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
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

from booking.auth import mint

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

    @classmethod
    def of(cls, environment: Environment) -> Options:
        o = environment.parsed_options
        return cls(Path(o.release), o.residents, Path(o.results), o.max_fail_ratio,
                   o.max_p99_ms, o.check)


@dataclass(frozen=True, slots=True)
class Release:
    base_url: str
    opens_at_epoch: float
    course_ids: list[int]  # hottest first

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


@functools.cache
def load_release(path: Path) -> Release:
    try:
        data = json.loads(path.read_text())
        release = Release(str(data["base_url"]), float(data["opens_at_epoch"]),
                          [int(course_id) for course_id in data["course_ids"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"cannot read the release {path} ({exc}); write one with "
                         "`booking release --out FILE`") from exc
    if not release.course_ids:
        raise SetupError(f"the release {path} has no courses")
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
class GrabAnswer:
    outcome: str  # booked, sold_out, not_open, course_cancelled, refused, unavailable, error
    booking_id: str | None = None
    retry_after_s: float = 1.0


def body_of(response: FastResponse) -> Any:
    try:
        return response.json()
    except (ValueError, TypeError, AttributeError):
        return None


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


def judge_grab(response: FastResponse, course_id: int) -> Judged[GrabAnswer]:
    status, body = response.status_code, body_of(response)
    if failure := no_answer(response):
        if status == 503:
            return GrabAnswer("unavailable", retry_after_s=retry_after(response)), failure
        return GrabAnswer("error"), failure
    if status in (200, 201):
        if (isinstance(body, dict) and isinstance(body.get("id"), str)
                and body.get("course_id") == course_id and body.get("status") == "confirmed"):
            return GrabAnswer("booked", booking_id=body["id"]), None
        return GrabAnswer("error"), f"{status} without a confirmed booking: {str(body)[:200]}"
    code = body.get("code") if isinstance(body, dict) else None
    if status == 409 and isinstance(code, str):
        outcome = code if code in DOMAIN_409 else "refused"
        return GrabAnswer(outcome, retry_after_s=retry_after(response)), None
    return GrabAnswer("error"), f"{status} {str(body)[:200]}"


def judge_cancel(response: FastResponse, booking_id: str) -> Judged[bool]:
    body = body_of(response)
    if failure := no_answer(response):
        return False, failure
    if (response.status_code == 200 and isinstance(body, dict) and body.get("id") == booking_id
            and body.get("status") == "cancelled"):
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


def judge_my_bookings(response: FastResponse, held: str | None) -> Judged[bool]:
    body = body_of(response)
    if failure := no_answer(response):
        return False, failure
    if response.status_code != 200 or not isinstance(body, list):
        return False, f"my bookings answered {response.status_code} {str(body)[:200]}"
    if held is not None and held not in {b.get("id") for b in body if isinstance(b, dict)}:
        return False, f"booking {held} missing from /v1/me/bookings"
    return True, None


class Resident(FastHttpUser):
    """One resident on release day: waits for the opening, tries their wishes, then lingers."""

    wait_time = between(*LINGER_S)
    network_timeout = REQUEST_TIMEOUT_S
    connection_timeout = REQUEST_TIMEOUT_S

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = Options.of(environment)
        number = next_user_number(environment.runner)
        self.rng = random.Random(number)
        self.resident_id = f"lt-{number % max(1, options.residents)}"
        self.release_path = options.release
        self.headers: dict[str, str] = {}
        self.wishes: list[int] = []
        self.held: str | None = None
        self.cancelled = False
        self.rushed = False

    def on_start(self) -> None:
        try:
            require_loopback(self.host)
            release = load_release(self.release_path)
            self.headers = bearer(self.resident_id)
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
        """Try the wishes in order until one gives a seat; then maybe cancel, or look it up."""
        for course_id in self.wishes:
            if self.grab(course_id):
                break
            self.between_actions()
        if self.held is None:
            return
        self.think()
        if self.rng.random() < CANCEL_SHARE:
            self.cancel()
        else:
            self.my_bookings()

    def linger(self) -> None:
        """Reload the list; without a seat, grab a wished one that came back."""
        seats = self.course_list()
        if self.held is None and not self.cancelled:
            freed = [course_id for course_id in self.wishes if seats.get(course_id, 0) > 0]
            if freed:
                self.grab(freed[0])

    def grab(self, course_id: int) -> bool:
        for _ in range(MAX_ATTEMPTS):
            answer = self.call("POST", f"/v1/courses/{course_id}/bookings",
                               "/v1/courses/[id]/bookings",
                               functools.partial(judge_grab, course_id=course_id))
            if answer.booking_id is not None:
                self.held = answer.booking_id
                RECEIVED.add(answer.booking_id)
                return True
            if answer.outcome not in RETRIED:
                return False
            gevent.sleep(min(answer.retry_after_s, MAX_RETRY_WAIT_S) + self.rng.uniform(0, 0.5))
        return False

    def cancel(self) -> None:
        held = self.held
        if held is not None and self.call("DELETE", f"/v1/bookings/{held}", "/v1/bookings/[id]",
                                          lambda r: judge_cancel(r, held)):
            self.held, self.cancelled = None, True

    def my_bookings(self) -> None:
        self.call("GET", "/v1/me/bookings", "/v1/me/bookings",
                  lambda r: judge_my_bookings(r, self.held))

    def course_list(self) -> dict[int, int]:
        return self.call("GET", "/v1/courses?limit=50&offset=0", "/v1/courses",
                         judge_course_list)

    def call(self, method: str, path: str, name: str,
             judge: Callable[[FastResponse], Judged[T]]) -> T:
        with self.client.request(method, path, name=name, headers=self.headers,
                                 catch_response=True) as response:
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
    if not is_master(environment):
        booking_secret()
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
