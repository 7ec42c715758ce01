"""Release day: thousands of residents press "Book" in the same second.

Why this exists: DESIGN.md promises every resident a fast, honest answer and that no seat is
ever sold twice or lost. This Locust scenario rehearses an opening against a running service
on 127.0.0.1, each resident from an address of its own (`X-Forwarded-For`, as through a load
balancer, so the per-address rate limit judges residents, not the crowd). Every user is
spawned before the opening and waits for `opens_at`, so the first grabs land together; then
each behaves like a person: skewed wishes (most aim at the hottest tenth), the next wish on
`sold_out`, Retry-After on `not_open`, a few cancel, many reload the course list. On a paid
course a seat is a hold: most pay it (a signed callback, as the payment provider sends), a few
let it lapse or cancel it. Some answered `sold_out` join that course's
waitlist and later look at their place (paying the hold a promotion gives them) or leave; some
holders swap their seat for another course. Every answer's body is checked, every booking id a
client was told about goes to `<results>/received-<pid>.txt`, and the run ends with a verdict
(failure ratio, p99 and `booking check` on Postgres and Redis, which also proves the holds,
waitlists and payments) that decides the exit code. Commands: loadtest/README.md.

This file is the entry Locust loads (`locust -f loadtest/locustfile.py`); the scenario lives in
`loadtest/release_day/`: `options` (the flags), `judges` (what each answer means), `resident`
(the `Resident` user) and `verdict` (the run's life, thresholds and the checker).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Locust puts the current folder on sys.path; the repository root, for a run started elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.release_day import options, verdict  # their event listeners register on import
from loadtest.release_day.resident import Resident

__all__ = ["Resident", "options", "verdict"]
