"""Release-day rehearsal commands: `booking release` publishes a release through the API and
writes it as JSON; `booking check` proves afterwards, from Postgres and Redis, that every
invariant held (for every course, or only those of `--courses` or of a `--release` file)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from booking.core.settings import ConfigError, Settings
from booking.core.stores import connected, running


def publish(args: argparse.Namespace) -> int:
    from booking.ops.rehearsal import publish_release

    if not (1 <= args.courses <= 100_000 and 1 <= args.seats <= 10_000):
        raise ConfigError("--courses must be 1-100000 and --seats 1-10000.")
    if not (0 <= args.paid_share <= 1 and 1 <= args.hold_minutes <= 1440):
        raise ConfigError("--paid-share must be 0-1 and --hold-minutes 1-1440.")
    settings = Settings.from_env()
    release = asyncio.run(publish_release(args.url, settings.secret, courses=args.courses,
                                          seats=args.seats, opens_in_s=args.opens_in,
                                          paid_share=args.paid_share,
                                          hold_minutes=args.hold_minutes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(release.to_dict(), indent=1))
    print(f"Published {args.courses} courses x {args.seats} seats, opening at "
          f"{release.opens_at}; written to {out}.")
    return 0


def check(args: argparse.Namespace) -> int:
    """Exit 0 when every invariant holds, 1 on a violation (2: bad options)."""
    from booking.ops.check import read_received

    paths = [Path(p) for p in args.received]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(missing)}.")
    received = read_received(paths) if paths else None
    course_ids = _scope(args)
    with running(Settings.from_env(), quiet=True) as ready:
        return 0 if asyncio.run(_check(ready, received, course_ids)) else 1


def _scope(args: argparse.Namespace) -> list[int] | None:
    """The courses to look at: --courses, the courses of --release, or None for every one."""
    if args.release is None:
        return args.courses
    from booking.ops.rehearsal import ReleaseFileError, load_release

    try:
        return load_release(Path(args.release)).course_ids
    except ReleaseFileError as exc:
        raise ConfigError(f"{exc}.") from exc


async def _check(settings: Settings, received: set[str] | None,
                 course_ids: list[int] | None) -> bool:
    from booking.ops.check import check_invariants

    async with connected(settings) as stores:
        report = await check_invariants(stores.pool, stores.redis, received,
                                        course_ids=course_ids)
    print(report.summary())
    return report.ok
