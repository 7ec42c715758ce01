"""`python -m loadtest.faults`: every scenario (or one), its figures, a verdict, then JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import loadtest.faults
from loadtest.faults.figures import Figures
from loadtest.faults.lab import FaultLab, Plan
from loadtest.faults.run import run_scenario
from loadtest.faults.scenarios import SCENARIO_NAMES


def _parser() -> argparse.ArgumentParser:
    defaults = Plan()
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults",
                                     description=loadtest.faults.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIO_NAMES, "all"], default="all")
    for name in ("residents", "courses", "seats", "roomy_courses", "connections", "workers",
                 "pending_timeout_s", "reconcile_interval_s", "small_pool", "burst", "swap_wave"):
        parser.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name,
                            type=int, default=getattr(defaults, name))
    for name in ("warmup_s", "fault_s", "slow_hold_s", "recovery_s", "cancel_share",
                 "paid_share", "pay_share", "swap_share", "waitlist_share", "look_share",
                 "wave_every_s"):
        parser.add_argument(f"--{name.removesuffix('_s').replace('_', '-')}", dest=name,
                            type=float, default=getattr(defaults, name))
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (stores, service log)")
    return parser


async def main_async(args: argparse.Namespace) -> int:
    names = list(SCENARIO_NAMES) if args.scenario == "all" else [args.scenario]
    fields = {k: v for k, v in vars(args).items() if k in Plan.__dataclass_fields__}
    plan = Plan(**fields)
    folder = Path(tempfile.mkdtemp(prefix="booking-faults-"))
    print(f"Stores, service and its log under {folder}", flush=True)
    results: list[Figures] = []
    async with FaultLab(folder, plan) as lab:
        for name in names:
            figures = await run_scenario(lab, name)
            results.append(figures)
            print("\n".join(figures.lines()), flush=True)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    failed = [f.scenario for f in results if not f.ok]
    print(f"fault verdict: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    print(json.dumps([asdict(f) for f in results], default=str))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
