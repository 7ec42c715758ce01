"""`python -m loadtest.capacity`: calibrate the model on a bench, then project a city's release.

Exit 0: calibrated within 15 % (and projected, unless --no-projection); 1: the model missed the
bench by more than 15 % on decisions/s or p99, so nothing is projected; 2: a bench line the
model cannot use (one line on stderr says why), or a bench that failed to run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from booking.ops.service import free_port
from loadtest.capacity.calibrate import (
    FULL_GRAB_FACTOR,
    Bench,
    BenchError,
    comparison,
    derive_costs,
    one_box,
    read_bench,
    run_bench_model,
)
from loadtest.capacity.model import Costs
from loadtest.capacity.project import (
    SENSITIVITY_MACHINES,
    CityPlan,
    base_table,
    city_costs,
    sensitivity_table,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bench", type=Path, metavar="FILE",
                        help="a file holding booking bench's output (its last JSON line is used)")
    source.add_argument("--run-bench", action="store_true",
                        help="run booking bench now (embedded stores) and calibrate on it")
    for name in ("courses", "seats", "residents"):
        parser.add_argument(f"--{name}", type=int, help=f"--run-bench: the bench's --{name}")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="--run-bench: skip the bench's ceiling runs")
    parser.add_argument("--full-grab-factor", type=float, default=FULL_GRAB_FACTOR,
                        help="app CPU of a grab that takes a seat, in sold-outs from memory "
                             f"(default {FULL_GRAB_FACTOR:g}; the bench does not split it)")
    parser.add_argument("--cores", type=float,
                        help="the one box's cores for the model (default: the CPU the bench's "
                             "processes got during the rush)")
    parser.add_argument("--no-gc", action="store_true",
                        help="leave out the workers' full garbage collections (the model as it "
                             "was before they were measured; for comparison)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=int, default=CityPlan.budget,
                        help="simulated requests per projection run at most (default %(default)s)")
    parser.add_argument("--spread", type=float, default=CityPlan.spread_s,
                        help="seconds over which the city's residents arrive (default %(default)s)")
    parser.add_argument("--no-projection", action="store_true",
                        help="calibrate only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        bench = _run_bench(args) if args.run_bench else read_bench(args.bench)
    except BenchError as exc:
        print(f"loadtest.capacity: {exc}", file=sys.stderr)
        return 2
    costs, said = derive_costs(bench, args.full_grab_factor, args.cores, gc=not args.no_gc)
    outcome = run_bench_model(bench, costs, one_box(bench, args.cores), seed=args.seed)
    table, calibrated = comparison(bench, outcome)
    option = bench.option
    print(f"\nCalibration: the model of booking bench's one box against that run "
          f"({option['courses']} courses x {option['seats']} seats, {option['residents']} "
          f"residents, {option['concurrency']} connections, {option['workers']} workers)\n")
    print(table)
    print("\nHow the model's service times were derived (assumptions):")
    print("\n".join(f"- {line}" for line in said))
    if not calibrated:
        print("\nThe model misses the bench by more than 15 % on decisions/s or p99: "
              "no projection (a model that cannot reproduce the box it was measured on "
              "says nothing about a city).")
        return 1
    print("\nCalibrated: decisions/s and p99 within 15 % of the bench.")
    if not args.no_projection:
        _project(costs, bench, CityPlan(budget=args.budget, spread_s=args.spread), args.seed)
    return 0


def _project(costs: Costs, bench: Bench, plan: CityPlan, seed: int) -> None:
    city = city_costs(costs)
    share = bench.memory_share
    print("\n## Projection (a MODEL, not a measurement): a Shanghai-size release\n")
    print(base_table(city, plan, share, seed))
    print(f"\nSensitivity on {SENSITIVITY_MACHINES} app machines: the app CPU of a grab that "
          f"takes a seat (x1 = {city.full_grab * 1000:.3f} ms), and the share of sold-outs "
          f"answered from a worker's memory\n")
    print(sensitivity_table(city, plan, share, seed))
    print("\nAssumptions of the projection:")
    print("\n".join(f"- {line}" for line in plan.assumptions(share)))


def _run_bench(args: argparse.Namespace) -> Bench:
    """booking bench with the given options; its output goes to stderr as it runs."""
    command = [sys.executable, "-m", "booking", "bench", "--port", str(free_port())]
    for name in ("courses", "seats", "residents"):
        if getattr(args, name) is not None:
            command += [f"--{name}", str(getattr(args, name))]
    if args.no_ceiling:
        command.append("--no-ceiling")
    with tempfile.TemporaryDirectory(prefix="capacity-") as work:
        out = Path(work) / "bench.out"
        with out.open("w") as sink:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
        text = out.read_text()
        sys.stderr.write(text)
        if done.returncode not in (0,):
            raise BenchError(f"booking bench exited {done.returncode} (its output is above)")
        return read_bench(out)


if __name__ == "__main__":
    sys.exit(main())
