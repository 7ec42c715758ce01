"""Fault rehearsals: break a store or a worker under a running rush, then prove nothing was lost.

Each scenario publishes a hot release of its own (some courses paid) on stores the lab owns
(embedded Postgres and Redis in a folder of their own, so they can be killed without touching
anybody else's), rushes it with a crowd of residents who grab, pay holds, give seats back (paid
ones too), swap in both directions between the two courses of a pair (in waves, at one moment),
and join, look at and leave waitlists of sold-out courses (so seats keep moving and Postgres
keeps writing, in both lock orders, for the whole fault), breaks one thing in the middle, keeps
the rush going through the recovery, counts the requests still unanswered when it ends, then
waits for the reconciler and runs the invariant checker and the refund list.

    python -m loadtest.faults                      # every scenario, a few minutes at most
    python -m loadtest.faults --scenario postgres --residents 600

Scenarios: `redis` (killed, restarted empty), `postgres` (fast stop, then start), `worker` (one
worker SIGKILLed mid-grab; uvicorn's supervisor starts a new one), `slow` (a transaction
holds an ACCESS EXCLUSIVE lock on bookings for longer than the statement timeout) and
`small-pool` (one worker with a pool of two; Redis flushed while more residents than that join
waitlists of sold-out courses at one moment). The figures of each are printed with a verdict;
the exit code is 1 when any scenario found a violation.
`tests/test_faults.py` runs short forms of the same scenarios through the same functions.

The package, by concern: `lab` (the plan, the owned stores and the service on them), `rush`
(the residents and their answers), `figures` (counts, percentiles, rules and findings),
`scenarios` (the faults), `run` (one whole scenario) and `__main__` (the command).
"""

from loadtest.faults.figures import Figures
from loadtest.faults.lab import FaultLab, Plan
from loadtest.faults.run import run_scenario

__all__ = ["FaultLab", "Figures", "Plan", "run_scenario"]
