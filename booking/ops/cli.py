"""The `booking` command: parsing and dispatch only.

Each command's body lives in a module of booking/ops/ by concern (serve, tools, rehearsal,
check, pay, bench, verify_draw), imported only when that command runs, so `booking --help` and
`booking token` stay quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from booking.core.settings import ConfigError

Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except ConfigError as exc:
        print(f"booking: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _command(module: str, function: str = "run") -> Command:
    """The body of a command: `function` of booking.ops.`module`, imported when it runs."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"booking.ops.{module}"), function)(args)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="booking", description="Seat booking for hot evening "
                                     "classes: serve, db upgrade, token, reconcile, release, "
                                     "check, pay, bench, verify-draw.")
    sub = parser.add_subparsers(title="commands")
    _serve_arguments(sub.add_parser(
        "serve", help="run the HTTP service (embedded stores by default)"))
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(title="db commands")
    db_sub.add_parser(
        "upgrade", aliases=["init"],
        help="create the schema or apply the migrations it lacks (safe to repeat)",
    ).set_defaults(run=_command("tools", "db_upgrade"))
    _token_arguments(sub.add_parser("token", help="print a bearer token signed with "
                                                  "BOOKING_SECRET"))
    _release_arguments(sub.add_parser("release", help="publish a release for a load test, "
                                                      "via the API"))
    _check_arguments(sub.add_parser("check", help="verify every invariant against Postgres "
                                                  "and Redis"))
    bench = sub.add_parser("bench", help="rush a release with wrk and report the figures")
    _bench_arguments(bench)
    bench.set_defaults(run=_command("bench"))
    _pay_arguments(sub.add_parser("pay", help="act as the payment provider: pay a held booking"))
    sub.add_parser("reconcile", help="rebuild the Redis seat counters from Postgres"
                   ).set_defaults(run=_command("tools", "reconcile"))
    _verify_draw_arguments(sub.add_parser(
        "verify-draw", help="re-check a published draw (booking-draw/v1) from its files"))
    return parser


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--demo", action="store_true",
                       help="load a demo term whose sales open a minute after start")
    serve.add_argument("--crowd", type=int, default=500, metavar="N",
                       help="with --demo: N simulated residents rush the hot courses at the "
                            "opening (default 500, 0 for none)")
    serve.add_argument("--host", help="listen address (BOOKING_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (BOOKING_PORT, default 8000)")
    serve.add_argument("--workers", type=int,
                       help="worker processes (BOOKING_WORKERS, default one per core)")
    serve.set_defaults(run=_command("serve"))


def _token_arguments(token: argparse.ArgumentParser) -> None:
    token.add_argument("role", choices=["resident", "venue", "operator"])
    token.add_argument("id", nargs="?", help="resident id, or venue id for a venue token")
    token.add_argument("--days", type=float, default=30, help="validity in days (default 30)")
    token.add_argument("--tier", help="a resident's priority group (e.g. senior): earlier "
                       "openings in releases that name it")
    token.set_defaults(run=_command("tools", "token"))


def _release_arguments(release: argparse.ArgumentParser) -> None:
    release.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    release.add_argument("--courses", type=int, default=60, help="courses (default 60)")
    release.add_argument("--seats", type=int, default=20, help="seats per course (default 20)")
    release.add_argument("--opens-in", type=float, default=30, metavar="SECONDS",
                         help="sales open this many seconds from now (default 30)")
    release.add_argument("--paid-share", type=float, default=0.0, metavar="SHARE",
                         help="share of the courses (0-1) with a price, whose grabs are holds "
                              "(default 0)")
    release.add_argument("--hold-minutes", type=int, default=10,
                         help="how long a hold waits for its payment (default 10)")
    release.add_argument("--out", default="loadtest/results/release.json",
                         help="where to write the release (JSON)")
    release.set_defaults(run=_command("rehearsal"))


def _check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("--received", nargs="*", default=[], metavar="PATH",
                       help="files or folders of booking ids that clients were told about")
    scope = check.add_mutually_exclusive_group()
    scope.add_argument("--courses", type=_course_ids, metavar="ID,ID,...",
                       help="look only at these courses (default: every course)")
    scope.add_argument("--release", metavar="PATH",
                       help="look only at the courses of this release (the JSON file "
                            "`booking release` writes)")
    check.set_defaults(run=_command("check"))


def _course_ids(text: str) -> list[int]:
    """`--courses 1,2,3`: positive course ids, comma-separated."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of course ids like 1,2,3")
    return [int(part) for part in parts]


def _pay_arguments(pay: argparse.ArgumentParser) -> None:
    pay.add_argument("booking_id", help="the held booking to pay")
    pay.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    pay.add_argument("--amount", type=int, metavar="CENTS",
                     help="amount paid (default: the course's price, read from Postgres)")
    pay.add_argument("--ref", help="provider reference (default: a new random one)")
    pay.set_defaults(run=_command("pay"))


def _verify_draw_arguments(verify: argparse.ArgumentParser) -> None:
    verify.usage = ("booking verify-draw DRAW.json ENTRIES.jsonl RESULTS.jsonl\n"
                    "       booking verify-draw --url URL --release ID")
    verify.add_argument("files", nargs="*", metavar="FILE",
                        help="the draw record (JSON), the entries file and the results file")
    verify.add_argument("--url", help="fetch the three from this running service instead")
    verify.add_argument("--release", metavar="ID", help="with --url: the release whose draw")
    verify.set_defaults(run=_command("verify_draw"))


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`booking bench` options (kept here so that parsing imports nothing heavy)."""
    parser.add_argument("--courses", type=int, default=400, help="courses (default 400)")
    parser.add_argument("--seats", type=int, default=25, help="seats per course (default 25)")
    parser.add_argument("--residents", type=int, default=100_000,
                        help="residents in the crowd (default 100000)")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="open connections (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="service worker processes (default: one per core)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--port", type=int, default=8077, help="service port (default 8077)")
    parser.add_argument("--flood", type=float, default=0.0, metavar="SHARE",
                        help="share of requests (0-0.9) sent by one abuser from one address, "
                             "to show that refusing them (429) does not slow honest grabs")
    parser.add_argument("--term-cap", type=int, default=0, metavar="N",
                        help="open the courses in first-come releases of one term capped at "
                             "N seats per resident (1-20; default 0: no release)")
    parser.add_argument("--max-seconds", type=int, default=300,
                        help="stop the rush after this long (default 300)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run on a private Redis Cluster (3 primaries, 3 replicas) instead "
                             "of one Redis")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip measuring the bare stack before and after the rush")
