"""The release-day kit end to end, in small: publish a release, rush it with Locust, check.

Half the courses (the hot one among them) are paid, so the rush also pays holds, lets some
lapse or cancels them, joins and leaves waitlists and swaps seats, and the checker at the end
proves holds, waitlist and payments as well as seats.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import run_cli, service_env

REPO = Path(__file__).resolve().parent.parent


def test_a_small_locust_release_day_passes_its_own_verdict(server, stores, tmp_path):
    env = service_env(stores, tmp_path)
    release = tmp_path / "release.json"
    published = run_cli(env, "release", "--url", server, "--courses", "6", "--seats", "4",
                        "--opens-in", "5", "--paid-share", "0.5", "--out", str(release))
    assert published.returncode == 0, published.stderr
    written = json.loads(release.read_text())
    assert len(written["course_ids"]) == 6
    assert written["paid_course_ids"] == written["course_ids"][::2]  # the hottest first

    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "-u", "60", "-r", "60", "--run-time", "14s", "--release", str(release),
         "--residents", "60", "--results", str(tmp_path / "results"),
         "--csv", str(tmp_path / "run")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "release-day verdict: PASS" in output
    # Each resident comes from an address of its own (X-Forwarded-For, as through a load
    # balancer), so the per-address limit at its default never takes the crowd for an abuser.
    assert "(0 answered 429 rate_limited)" in output, output[-3000:]
    assert rate_limited(tmp_path / "run_failures.csv") == 0
    # The checker judged this release's courses only, not what other tests left beside them.
    assert "Checked 6 courses" in output
    received = (tmp_path / "results").glob("received-*.txt")
    # At least the hottest course sold out, and the checker above found every id in Postgres.
    assert sum(len(p.read_text().split()) for p in received) >= 4
    requests = requests_by_name(tmp_path / "run_stats.csv")
    assert requests.get(("POST", "/v1/payments/callback"), 0) > 0, requests
    assert requests.get(("POST", "/v1/courses/[id]/waitlist"), 0) > 0, requests


def requests_by_name(stats: Path) -> dict[tuple[str, str], int]:
    with stats.open() as f:
        return {(row["Type"], row["Name"]): int(row["Request Count"]) for row in csv.DictReader(f)}


def rate_limited(failures: Path) -> int:
    """Failures Locust recorded as a 429 answer, from its CSV of failures."""
    with failures.open() as f:
        return sum(int(row["Occurrences"]) for row in csv.DictReader(f) if "429" in row["Error"])
