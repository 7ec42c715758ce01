"""The scenario's command-line flags, the release they name, and the checks that fail a run
before it starts (`SetupError`: the message says what to change)."""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from booking.ops.rehearsal import Release, ReleaseFileError, load_release

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


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
def release_of(path: Path) -> Release:
    """The release file (`booking release --out`), read once per process."""
    try:
        return load_release(path)
    except ReleaseFileError as exc:
        raise SetupError(str(exc)) from exc


def require_loopback(url: str) -> None:
    if urlsplit(url).hostname not in LOOPBACK_HOSTS:
        raise SetupError(f"{url} is not on this machine; load tests target 127.0.0.1 only")


def booking_secret() -> str:
    return _secret("BOOKING_SECRET", "to mint resident tokens")


def payment_secret() -> str:
    return _secret("BOOKING_PAYMENT_SECRET", "to sign payment callbacks, or pass --pay-share 0")


def _secret(name: str, purpose: str) -> str:
    """The service's secret from the environment (the scenario mints and signs with it)."""
    secret = os.environ.get(name, "")
    if len(secret) < 32:
        raise SetupError(f"set {name} (the service's, at least 32 characters) {purpose}")
    return secret


def require_checker_stores() -> None:
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    data_dir = Path(os.environ.get("BOOKING_DATA_DIR", ".booking"))
    if not (data_dir / "postgres").is_dir():
        raise SetupError(f"`booking check` needs the service's stores: no {data_dir}/postgres; "
                         "set BOOKING_DATA_DIR to the service's .booking folder, or "
                         "DATABASE_URL and REDIS_URL, or pass --no-check")
