"""How long a city-size lottery takes to draw: `python -m loadtest.draw_bench`.

Publishes `--courses` courses of `--seats` seats in one lottery through the API, writes
`--entries` entries of `--wishes` ranked wishes straight into Postgres (preparing them through
the API is not what is measured), closes the entries, then times the operator's
`POST /v1/releases/{id}/draw`: freezing the entries file, the draw, applying every win and
waitlist place in one transaction, and reloading every course into the gate. Then
`booking verify-draw --url` re-checks it and the checker looks at the courses. Prints the
figures and one JSON line; exits 1 when the draw or a check fails. Uses the stores of
DATABASE_URL / REDIS_URL, or private embedded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from booking.core.auth import mint
from booking.core.settings import Settings
from booking.core.stores import connected, running
from booking.ops.check import check_invariants
from booking.ops.rehearsal import publish_release
from booking.ops.service import Service

SECRET = "draw-bench-secret-long-enough-for-hs256"
INSERT_ENTRY = """
INSERT INTO release_entries (release_id, resident_id, entry_id, wishes) VALUES ($1, $2, $3, $4)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.draw_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--courses", type=int, default=160)
    parser.add_argument("--seats", type=int, default=25)
    parser.add_argument("--wishes", type=int, default=3)
    parser.add_argument("--term-cap", type=int, default=1)
    return parser


async def _prepare(base: str, database_url: str, args: argparse.Namespace) -> int:
    published = await publish_release(base, SECRET, courses=args.courses, seats=args.seats,
                                      opens_in_s=-1)
    now = datetime.now(UTC)
    operator = {"Authorization": f"Bearer {mint(SECRET, 'operator', 'draw-bench')}"}
    async with httpx.AsyncClient(base_url=base, headers=operator, timeout=60) as http:
        answer = await http.post("/v1/releases", json={
            "title": "draw bench", "mode": "lottery", "course_ids": published.course_ids,
            "term": f"draw-bench-{secrets.token_hex(3)}", "term_cap": args.term_cap,
            "opens_at": (now - timedelta(minutes=1)).isoformat(),
            "closes_at": (now + timedelta(hours=1)).isoformat(), "max_wishes": args.wishes,
            "beacon": "draw bench beacon, sealed"})
        answer.raise_for_status()
        release_id = answer.json()["id"]
    rng = random.Random(7)
    popular = sorted(published.course_ids, key=lambda _: rng.random())
    weights = [1 / (rank + 1) for rank in range(len(popular))]  # Zipf-like: a few hot ones
    rows = []
    for n in range(args.entries):
        chosen: list[int] = []
        while len(chosen) < args.wishes:
            course = rng.choices(popular, weights)[0]
            if course not in chosen:
                chosen.append(course)
        rows.append((release_id, f"draw-bench-{n}", secrets.token_hex(8), chosen))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(INSERT_ENTRY, rows)
        await conn.execute("UPDATE releases SET closes_at = clock_timestamp() WHERE id = $1",
                           release_id)
    finally:
        await conn.close()
    return release_id


async def _draw(base: str, release_id: int) -> tuple[float, dict[str, object]]:
    operator = {"Authorization": f"Bearer {mint(SECRET, 'operator', 'draw-bench')}"}
    async with httpx.AsyncClient(base_url=base, headers=operator, timeout=600) as http:
        started = time.perf_counter()
        answer = await http.post(f"/v1/releases/{release_id}/draw")
        took = time.perf_counter() - started
    if answer.status_code not in (200, 201):
        raise SystemExit(f"the draw answered {answer.status_code}: {answer.text}")
    return took, answer.json()


async def _checked(settings: Settings, release_id: int) -> list[str]:
    async with connected(settings) as stores:
        course_ids = [row[0] for row in await stores.pool.fetch(
            "SELECT id FROM courses WHERE release_id = $1", release_id)]
        report = await check_invariants(stores.pool, stores.redis, None, course_ids=course_ids)
        return report.violations


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    with running(settings) as ready, tempfile.TemporaryDirectory(prefix="draw-bench-") as work:
        env = {**os.environ, "DATABASE_URL": ready.database_url, "REDIS_URL": ready.redis_url,
               "BOOKING_SECRET": SECRET, "BOOKING_WORKERS": "2"}
        with Service(env, Path(work) / "server.log") as service:
            print(f"Preparing {args.entries} entries x {args.wishes} wishes over "
                  f"{args.courses} courses x {args.seats} seats ...", flush=True)
            release_id = asyncio.run(_prepare(service.base_url, ready.database_url, args))
            took, record = asyncio.run(_draw(service.base_url, release_id))
            verified = subprocess.run(
                [sys.executable, "-m", "booking", "verify-draw", "--url", service.base_url,
                 "--release", str(release_id)], capture_output=True, text=True, env=env)
            violations = asyncio.run(_checked(ready, release_id))
    figures = {"entries": record["entries_count"], "courses": args.courses,
               "seats": args.seats, "wishes": args.wishes, "draw_and_apply_s": round(took, 3),
               "verified": verified.returncode == 0, "violations": len(violations)}
    print(f"draw and apply: {took:.2f} s for {record['entries_count']} entries")
    print((verified.stdout or verified.stderr).strip())
    print("checker: " + ("clean" if not violations else "; ".join(violations[:5])))
    print(json.dumps(figures))
    return 0 if verified.returncode == 0 and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
