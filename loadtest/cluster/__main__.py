"""`python -m loadtest.cluster`: the rehearsal, its figures, a verdict, then one JSON line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import loadtest.cluster
from booking.core.settings import ConfigError
from loadtest.cluster.balancer import BalancerError, Checks
from loadtest.cluster.figures import summary
from loadtest.cluster.plan import Plan
from loadtest.cluster.run import rehearse

INT_OPTIONS = ("apps", "workers", "residents", "courses", "seats", "threads", "connections",
               "pending_timeout_s", "reconcile_interval_s")
FLOAT_OPTIONS = ("rush_s", "live_at_s", "redis_fault_at_s", "app_fault_at_s", "probe_every_s")


def _parser() -> argparse.ArgumentParser:
    defaults = Plan()
    parser = argparse.ArgumentParser(prog="python -m loadtest.cluster",
                                     description=loadtest.cluster.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kind in [*((n, int) for n in INT_OPTIONS), *((n, float) for n in FLOAT_OPTIONS)]:
        parser.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name,
                            type=kind, default=getattr(defaults, name))
    parser.add_argument("--maxconn", type=int, default=defaults.checks.maxconn,
                        help="HAProxy's maxconn per app process")
    parser.add_argument("--keep", action="store_true",
                        help="keep the folder (node, app and HAProxy logs, HAProxy's config)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = Plan(**{k: v for k, v in vars(args).items() if k in INT_OPTIONS + FLOAT_OPTIONS},
                checks=dataclasses.replace(Checks(), maxconn=args.maxconn))
    problems = plan.problems()
    if problems or shutil.which("wrk") is None:
        print(" ".join(problems) or "The rehearsal needs wrk: apt-get install wrk.",
              file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="booking-cluster-"))
    print(f"Stores, apps, HAProxy and their logs under {folder}", flush=True)
    try:
        found = rehearse(plan, folder)
    except (BalancerError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(summary(found), flush=True)
    print(json.dumps(found, default=str))
    return 0 if found["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
