"""The release-day kit end to end, in small: publish a release, rush it with Locust, check."""

from __future__ import annotations

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
                        "--opens-in", "5", "--out", str(release))
    assert published.returncode == 0, published.stderr
    assert len(json.loads(release.read_text())["course_ids"]) == 6

    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "-u", "60", "-r", "60", "--run-time", "14s", "--release", str(release),
         "--residents", "60", "--results", str(tmp_path / "results")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "release-day verdict: PASS" in output
    received = (tmp_path / "results").glob("received-*.txt")
    # At least the hottest course sold out, and the checker above found every id in Postgres.
    assert sum(len(p.read_text().split()) for p in received) >= 4
