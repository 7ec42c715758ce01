"""Fault rehearsals: break a store or a worker under a running rush, then prove nothing was lost.

Each scenario publishes a hot release of its own on stores the lab owns (embedded Postgres
and Redis in a folder of their own, so they can be killed without touching anybody else's),
rushes it with a crowd of residents who grab, hold and give seats back (so seats keep moving
and Postgres keeps writing for the whole fault), breaks one thing in the middle, keeps the rush
going through the recovery, then waits for the reconciler and runs the invariant checker.

    python -m loadtest.faults                      # every scenario, a few minutes at most
    python -m loadtest.faults --scenario postgres --residents 600

Scenarios: `redis` (killed, restarted empty), `postgres` (fast stop, then start), `worker` (one
worker SIGKILLed mid-grab; uvicorn's supervisor starts a new one) and `slow` (a transaction
holds an ACCESS EXCLUSIVE lock on bookings for longer than the statement timeout). The figures
of each are printed with a verdict; the exit code is 1 when any scenario found a violation.
`tests/test_faults.py` runs short forms of the same scenarios through the same functions.

The package, by concern: `lab` (the plan, the owned stores and the service on them), `rush`
(the residents and their answers), `figures` (counts, percentiles, rules and findings),
`scenarios` (the faults), `run` (one whole scenario) and `__main__` (the command).
"""

from loadtest.faults.figures import Figures
from loadtest.faults.lab import FaultLab, Plan
from loadtest.faults.run import run_scenario

__all__ = ["FaultLab", "Figures", "Plan", "run_scenario"]
