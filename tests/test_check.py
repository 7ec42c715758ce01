"""`booking check`: clean after a rush, and loud when an invariant is broken."""

from __future__ import annotations

import asyncio
import uuid

from conftest import grab, make_course, run_cli, service_env, unique

from booking.seats import course_keys


async def test_check_passes_after_a_rush_and_catches_each_broken_invariant(
        http, redis, stores, tmp_path):
    course = await make_course(http, capacity=10)
    answers = await asyncio.gather(*(grab(http, course["id"], unique("c")) for _ in range(40)))
    told = tmp_path / "received.txt"
    told.write_text("\n".join(a.json()["id"] for a in answers if a.status_code == 201))
    env = service_env(stores, tmp_path)

    clean = run_cli(env, "check", "--received", str(told))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK" in clean.stdout and "10 booking ids" in clean.stdout

    info = course_keys(course["id"])[0]
    await redis.hincrby(info, "left", 1)
    drifted = run_cli(env, "check")
    await redis.hincrby(info, "left", -1)
    assert drifted.returncode == 1
    assert f"course {course['id']}: gate says 1 seats left, ledger says 0" in drifted.stdout

    lost = tmp_path / "lost.txt"
    lost.write_text(str(uuid.uuid4()))
    missing = run_cli(env, "check", "--received", str(lost))
    assert missing.returncode == 1
    assert "1 booking(s) a client was told about are not in Postgres" in missing.stdout


def test_check_refuses_a_missing_received_file(stores, tmp_path):
    result = run_cli(service_env(stores, tmp_path), "check", "--received", "nowhere.txt")
    assert result.returncode == 2 and "no such file" in result.stderr
