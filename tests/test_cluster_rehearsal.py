"""The cluster rehearsal in short: `python -m loadtest.cluster` with two app processes behind
HAProxy on a private Redis Cluster, a few thousand residents for about ten seconds, a Redis
primary and then an app process SIGKILLed mid-rush. The test holds the command to its verdict
and to the figures it promises: no oversell (the checker is clean), the killed primary's shard
booked again and no grab of another shard failed, the killed app taken out by HAProxy within
its health checks' bound with nothing sent to it afterwards and its pending seats given back,
and a live-seat stream on one app showing grabs made through another, before and after the
faults.

HAProxy and wrk are installed with apt-get when missing (tests/install-debian.sh): this test
never skips. The rehearsal gets a database of its own on the session's Postgres; its Redis
Cluster, apps and HAProxy are its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import debian_tool, private_database

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--apps", "2", "--residents", "5000", "--rush", "10", "--live-at", "0.5",
         "--redis-fault-at", "2", "--app-fault-at", "6"]
BOUND_S = 2.0 + 0.5  # HAProxy's fall x inter, and the slack the verdict allows


@pytest.fixture(scope="module")
def tools() -> None:
    debian_tool("haproxy")
    debian_tool("wrk")


async def test_the_short_cluster_rehearsal_keeps_its_promises(stores, tools, tmp_path):
    async with private_database(stores, "rehearsal", migrated=False) as database_url:
        env = {k: v for k, v in os.environ.items()
               if k != "REDIS_URL" and not k.startswith("BOOKING_")}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "loadtest.cluster", *SHORT], cwd=ROOT,
            env={**env, "DATABASE_URL": database_url, "TMPDIR": str(tmp_path)},
            capture_output=True, text=True, timeout=240)
    told = done.stdout[-6000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1:] or ["{}"]
    assert last[0].startswith("{"), told
    figures = json.loads(last[0])
    assert done.returncode == 0 and figures["verdict"] == "PASS", told
    assert figures["violations"] == 0 and figures["check_before_reconcile"] == 0, told

    redis = figures["redis_fault"]
    assert redis["grabs_of_its_shard"] > 0, told  # the primary died under load
    assert redis["recovered_s"] is not None, told  # its shard booked again, after a failover
    assert redis["other_shards_grabs_until_recovered"] > 0, told  # the others kept answering
    assert redis["other_shards_failed"] == 0, told

    app = figures["app_fault"]
    assert app["taken_out_s"] is not None and app["taken_out_s"] <= BOUND_S, told
    assert app["sent_to_it_after_taken_out"] == 0 and app["failed_on_living_apps"] == 0, told
    assert app["orphans_back_after_s"] is not None, told
    assert app["back_in_haproxy_after_restart_s"] is not None, told

    for when in ("live_before_faults", "live_after_faults"):
        live = figures[when]
        assert live["seen"] and live["watched_on"] != live["grabbed_on"], told
        assert live["seats_left_shown"] == live["seats_left_before"] - live["grabs"], told

    assert figures["forwarded_for"]["first_429"] == figures["forwarded_for"]["limit"] + 1, told
    assert figures["forwarded_for"]["other_address_served"], told
    assert figures["by_status"].get("429", 0) == 0, told  # each resident judged by its own address
    assert all(figures["cpu_ms_per_request"][part] for part in ("app", "redis", "haproxy")), told
