"""The run's life and its verdict.

Prepare (master or local process): fail fast on what would spoil the run. Every process with
users writes the booking ids it was told about when the test stops. At quitting (master or local
process): the thresholds, the workers' files, `booking check`, and the verdict line that decides
the exit code and is printed last.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from booking.ops.rehearsal import Release
from loadtest.release_day.options import (
    Options,
    SetupError,
    booking_secret,
    payment_secret,
    release_of,
    require_checker_stores,
    require_loopback,
)
from loadtest.release_day.received import received_files, write_received

log = logging.getLogger("loadtest")

SETTLE_S = 3.0  # lets grabs still in flight at the stop land before the checker looks
WORKER_FILES_WAIT_S = 30.0  # how long the master waits for the workers' received files
CHECK_TIMEOUT_S = 300.0


@dataclass(slots=True)
class RunState:
    """What the master (or the single local process) remembers between events."""

    workers: int = 0
    verdict: str = ""


STATE = RunState()


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
    release = release_of(options.release)
    environment.host = environment.host or release.base_url
    require_loopback(environment.host)
    if parsed.headless and not parsed.run_time:
        raise SetupError("give --run-time (e.g. 60s): load tests are bounded in time")
    if problem := options.shares_problem():
        raise SetupError(problem)
    if not is_master(environment):
        booking_secret()
        if release.paid_course_ids and options.pay_share > 0:
            payment_secret()
    if options.check:
        require_checker_stores()
    options.results.mkdir(parents=True, exist_ok=True)
    for stale in received_files(options.results):
        stale.unlink()
    warn_if_late(release, parsed.num_users, parsed.spawn_rate)


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
        environment.host = release_of(Options.of(environment).release).base_url


@dataclass(slots=True)
class Generated:
    """Requests this process sent, for Locust's own cost: requests per CPU second."""

    requests: int = 0


GENERATED = Generated()


@events.request.add_listener
def on_request(**_: Any) -> None:
    GENERATED.requests += 1


def locust_cpu_line() -> str:
    """This process's requests and CPU seconds (user + system) since it started."""
    times = os.times()
    cpu_s = times.user + times.system
    rate = GENERATED.requests / cpu_s if cpu_s > 0 else 0.0
    return (f"locust process {os.getpid()}: {GENERATED.requests} requests, {cpu_s:.1f} CPU s, "
            f"{rate:.0f} requests per CPU second")


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_: Any) -> None:
    if not is_master(environment):
        write_received(Options.of(environment).results)
        log.info(locust_cpu_line())


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
        log.info(locust_cpu_line())  # the master's own share; each worker logs its own
        problems += missing_worker_files(options.results, STATE.workers)
    if options.check:
        problems += checker_problems(options.release, options.results)
    environment.process_exit_code = 1 if problems else 0
    STATE.verdict = verdict_line(environment, options, problems)
    log.info(STATE.verdict)


@events.quit.add_listener
def on_quit(**_: Any) -> None:
    if STATE.verdict:
        print(STATE.verdict, flush=True)  # the last line of the run, under Locust's tables


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


def checker_problems(release: Path, results: Path) -> list[str]:
    """Runs `booking check` on the courses of this run's release only (whatever else shares
    the database is not this run's to judge) and every received file; its report goes to
    the log."""
    gevent.sleep(SETTLE_S)
    files = [str(path) for path in received_files(results)]
    command = [sys.executable, "-m", "booking", "check", "--release", str(release),
               "--received", *files]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"booking check did not finish: {exc}"]
    log.info("booking check --release %s --received %s/received-*.txt:\n%s", release, results,
             (done.stdout + done.stderr).strip())
    return [] if done.returncode == 0 else [f"booking check exited {done.returncode}"]


def verdict_line(environment: Environment, options: Options, problems: list[str]) -> str:
    total = environment.stats.total
    figures = (f"{total.num_requests} requests, {total.fail_ratio:.2%} failed "
               f"({rate_limited(environment)} answered 429 rate_limited), "
               f"p50 {total.get_response_time_percentile(0.5) or 0:.0f} ms, "
               f"p99 {total.get_response_time_percentile(0.99) or 0:.0f} ms")
    checked = ", booking check clean" if options.check else ", not checked (--no-check)"
    if problems:
        return f"release-day verdict: FAIL ({'; '.join(problems)}): {figures}"
    return f"release-day verdict: PASS: {figures}{checked}"


def rate_limited(environment: Environment) -> int:
    """Answers 429 `rate_limited`: honest residents, each from an address of its own, should
    get none at the default limits."""
    return sum(error.occurrences for error in environment.stats.errors.values()
               if "'rate_limited'" in str(error.error))
