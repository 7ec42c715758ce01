"""`python -m loadtest.fairness_check`: did a release give every group its share of the seats?

    python -m loadtest.fairness_check --release ID --groups population.json \
        [--tried DIR_OR_FILES ...] [--url http://127.0.0.1:8000] [--redraws 20]

Reads the population (who is normal, slow or a bot: loadtest/fairness/population.py), what each
resident's client tried and was told (the crowd's `tried-*.jsonl`, by default beside the
population file), the release through the API and its seats in Postgres (DATABASE_URL and
REDIS_URL, or BOOKING_DATA_DIR of a service on embedded stores, as `booking check`).

Figures per group: seat share against population share with its 95 % CI, win rate against the
overall win rate, and entry capture (residents whose entry is in the frozen entries file with the
wishes they sent, over residents who sent one; a PUT that failed counts as not captured). One
draw of a few thousand seats is too small for a CI of +-1 point, so a draw release is pooled
with `--redraws` offline re-draws of its frozen entries with other beacons (the same
booking-draw/v1 code the service runs); a first-come release has no re-draw, and its CI is the
one run's. Invariants in SQL: no course oversold, one entry per resident, nobody above the term
cap, every win one of the winner's wishes and booked, every booking or entry a client was told
about in Postgres, and `booking check`'s own invariants on the release's courses; for a draw,
`booking verify-draw` must pass.

Passing: every group's share within +-2 points of its population share (bots at most 7 %), CI
half-width at most 1 point, win rate / overall within 0.9-1.1, capture at least 99 % in every
group (draw modes), every resident reached by the crowd, no violation. Exit 0 on a pass, 1 on
any failure, 2 when it cannot check; the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from booking.core.settings import ConfigError, Settings
from booking.core.stores import connected, running
from booking.ops.check import check_invariants
from booking.releases import draw as algorithm
from loadtest.fairness import population as populations

SHARE_POINTS = 2.0  # a group's seat share may differ from its population share by this
BOT_SHARE_MAX = 7.0
CI_POINTS = 1.0  # the CI half-width may be at most this
WIN_RATIO = (0.9, 1.1)
CAPTURE_MIN = 0.99
REDRAWS = 20
Z95 = 1.959964
MAX_LISTED = 10

ACTIVE_SEATS = """
SELECT b.id::text AS id, b.resident_id, b.course_id FROM bookings b
JOIN courses c ON c.id = b.course_id
WHERE c.release_id = $1 AND booking_active(b.status)
"""
OVERSOLD = """
SELECT c.id, c.capacity, count(b.id) AS active FROM courses c
LEFT JOIN bookings b ON b.course_id = c.id AND booking_active(b.status)
WHERE c.release_id = $1 GROUP BY c.id HAVING count(b.id) > c.capacity ORDER BY c.id
"""
ENTRIES = "SELECT resident_id, entry_id, wishes FROM release_entries WHERE release_id = $1"
TWICE_ENTERED = """
SELECT resident_id, count(*) AS n FROM release_entries WHERE release_id = $1
GROUP BY resident_id HAVING count(*) > 1
"""
ABOVE_CAP = """
SELECT b.resident_id, count(*) AS held
FROM bookings b JOIN courses c ON c.id = b.course_id JOIN releases r ON r.id = c.release_id
WHERE r.term = $1 AND booking_active(b.status)
GROUP BY b.resident_id HAVING count(*) > $2 ORDER BY count(*) DESC, b.resident_id
"""


class CannotCheck(Exception):
    """The check cannot run (no such release, not drawn, unreadable input): one sentence."""


@dataclass(slots=True)
class GroupFigures:
    population: int
    population_share: float  # percent
    seats: int = 0  # this run (a draw: its published wins)
    seat_share: float = 0.0  # percent, this run
    seat_share_ci: tuple[float, float] = (0.0, 0.0)  # this run, Wilson
    pooled_share: float = 0.0  # percent, over the pooled draws (this run when none)
    ci_half_width: float = 0.0  # points, of pooled_share
    win_rate: float = 0.0  # seats per resident of the group, pooled
    win_ratio: float = 0.0  # win_rate / the overall win rate
    tried: int = 0  # residents who sent at least one request
    captured: int | None = None  # draw modes: tried residents whose entry was stored
    capture: float | None = None


@dataclass(slots=True)
class Findings:
    """The figures of one check, and what fails it."""

    release_id: int
    mode: str
    residents: int
    groups: dict[str, GroupFigures]
    seats_total: int = 0  # seats the release had to give
    seats_won: int = 0
    draws_pooled: int = 1
    ci_method: str = ""
    answers: dict[str, int] = field(default_factory=dict)
    invariants: dict[str, int] = field(default_factory=dict)
    verify_draw: str | None = None
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, Any]:
        groups = {name: {key: getattr(g, key) for key in GroupFigures.__slots__}
                  for name, g in self.groups.items()}
        return {"check": "PASS" if self.ok else "FAIL", "release_id": self.release_id,
                "mode": self.mode, "residents": self.residents, "seats_total": self.seats_total,
                "seats_won": self.seats_won, "draws_pooled": self.draws_pooled,
                "ci_method": self.ci_method, "groups": groups, "answers": self.answers,
                "invariants": self.invariants, "verify_draw": self.verify_draw,
                "failures": self.failures, "violations": self.violations[:MAX_LISTED]}

    def lines(self) -> list[str]:
        out = [f"fairness check of release {self.release_id} ({self.mode}): {self.residents} "
               f"residents, {self.seats_won} of {self.seats_total} seats won; "
               f"{self.ci_method}"]
        for name, g in self.groups.items():
            capture = "" if g.capture is None else (
                f", capture {g.captured}/{g.tried} = {100 * g.capture:.2f} %")
            out.append(
                f"  {name:6} population {g.population_share:5.2f} % ({g.population}); seats "
                f"{g.seat_share:5.2f} % ({g.seats}) this run, {g.pooled_share:5.2f} % "
                f"+- {g.ci_half_width:.2f} pooled; win rate / overall {g.win_ratio:.3f}"
                f"{capture}")
        out.append("  answers: " + ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items())))
        out.append("  invariants: " + ", ".join(f"{k} {v}" for k, v in self.invariants.items()))
        if self.verify_draw:
            out.append(f"  verify-draw: {self.verify_draw}")
        out += [f"  note: {note}" for note in self.notes]
        out += [f"  VIOLATION: {v}" for v in self.violations[:50]]
        out.append("fairness verdict: PASS" if self.ok else
                   f"fairness verdict: FAIL ({'; '.join(self.failures)})")
        return out


# --- statistics -------------------------------------------------------------------------------

def t95(df: int) -> float:
    """Student's t 97.5 % quantile, by the Cornish-Fisher expansion around the normal one
    (within 0.003 from df = 5 on; a check pools 21 draws: 2.086)."""
    if df < 1:
        return math.inf
    z = Z95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def binomial_ci(seats: int, total: int) -> tuple[float, float]:
    """Wilson's 95 % interval of a share of `total` seats, in percent (sound at 0 seats too)."""
    if total == 0:
        return (0.0, 100.0)
    p, z2 = seats / total, Z95 * Z95
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return (round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2))


# --- reading ----------------------------------------------------------------------------------

def read_tried(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Each resident's line from the crowd's tried-*.jsonl files (files, or folders of them)."""
    tried: dict[str, dict[str, Any]] = {}
    for path in paths:
        files = sorted(path.glob("tried-*.jsonl")) if path.is_dir() else [path]
        for file in files:
            for raw in file.read_text().splitlines():
                if raw.strip():
                    row = json.loads(raw)
                    tried[row["resident"]] = row
    return tried


async def fetch_release(http: httpx.AsyncClient, release_id: int) -> dict[str, Any]:
    answer = await http.get(f"/v1/releases/{release_id}")
    if answer.status_code != 200:
        raise CannotCheck(f"GET /v1/releases/{release_id} answered {answer.status_code}: "
                          f"{answer.text[:200]}")
    return answer.json()


async def fetch_draw(http: httpx.AsyncClient, release_id: int) -> tuple[dict[str, Any], bytes,
                                                                      bytes]:
    answer = await http.get(f"/v1/releases/{release_id}/draw")
    if answer.status_code != 200:
        raise CannotCheck(f"release {release_id} has no draw yet: GET .../draw answered "
                          f"{answer.status_code} {answer.text[:200]}")
    record = answer.json()
    entries = await http.get(record["entries_url"])
    results = await http.get(record["results_url"])
    if entries.status_code != 200 or results.status_code != 200:
        raise CannotCheck("the draw's published files did not answer 200")
    return record, entries.content, results.content


# --- the check --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Inputs:
    release_id: int
    population: populations.Population
    tried: dict[str, dict[str, Any]]
    base_url: str
    redraws: int = REDRAWS


async def check(settings: Settings, inputs: Inputs) -> Findings:
    """Every figure and every failure of one release (see the module)."""
    async with httpx.AsyncClient(base_url=inputs.base_url, timeout=60) as http:
        release = await fetch_release(http, inputs.release_id)
        drawn = (await fetch_draw(http, inputs.release_id)
                 if release["mode"] in ("window", "lottery") else None)
    population = inputs.population
    sizes = population.sizes()
    findings = Findings(inputs.release_id, release["mode"], len(population.members), {
        group: GroupFigures(sizes[group], round(100 * sizes[group] / len(population.members), 2))
        for group in populations.GROUPS})
    group_of = population.group_of()
    async with connected(settings) as stores:
        pool = stores.pool
        seats = await pool.fetch(ACTIVE_SEATS, inputs.release_id)
        capacity = await pool.fetchval(
            "SELECT coalesce(sum(capacity), 0) FROM courses WHERE release_id = $1",
            inputs.release_id)
        entries = await pool.fetch(ENTRIES, inputs.release_id)
        await _invariants(findings, pool, release, seats, entries)
        received = {b for row in inputs.tried.values() for b in row.get("bookings") or []}
        report = await check_invariants(pool, stores.redis, received,
                                        course_ids=release["course_ids"])
    findings.invariants["booking_check"] = len(report.violations)
    findings.violations += report.violations
    findings.seats_total = int(capacity)
    _answers(findings, inputs.tried)
    _reach_and_capture(findings, inputs.tried, entries, group_of)
    if drawn is None:
        _first_come_shares(findings, seats, group_of)
    else:
        record, entries_file, results_file = drawn
        _draw_shares(findings, record, entries_file, results_file, entries, seats, group_of,
                     inputs.redraws)
        findings.verify_draw = _verify_draw(inputs.base_url, inputs.release_id, findings)
    _judge(findings)
    return findings


async def _invariants(findings: Findings, pool: asyncpg.Pool, release: dict[str, Any],
                      seats: Sequence[asyncpg.Record], entries: Sequence[asyncpg.Record]) -> None:
    """The fairness run's own invariants in SQL (booking check adds the gate's and the
    ledger's)."""
    release_id = release["id"]
    oversold = await pool.fetch(OVERSOLD, release_id)
    findings.violations += [f"course {r['id']} oversold: {r['active']} active bookings for "
                            f"{r['capacity']} seats" for r in oversold]
    twice = await pool.fetch(TWICE_ENTERED, release_id)
    findings.violations += [f"resident {r['resident_id']} has {r['n']} entries" for r in twice]
    above: list[asyncpg.Record] = []
    if release["term_cap"] is not None:
        above = await pool.fetch(ABOVE_CAP, release["term"], release["term_cap"])
        findings.violations += [f"resident {r['resident_id']} holds {r['held']} seats in term "
                                f"{release['term']} (cap {release['term_cap']})"
                                for r in above[:MAX_LISTED]]
        if len(above) > MAX_LISTED:
            findings.violations.append(f"... and {len(above) - MAX_LISTED} more residents "
                                       "above the cap")
    findings.invariants |= {"oversold_courses": len(oversold), "residents_entered_twice":
                            len(twice), "residents_above_cap": len(above)}
    if release["mode"] in ("window", "lottery"):
        wishes = {row["resident_id"]: set(row["wishes"]) for row in entries}
        unwished = [row for row in seats if row["resident_id"] in wishes
                    and row["course_id"] not in wishes[row["resident_id"]]]
        findings.violations += [f"booking {r['id']}: resident {r['resident_id']} won course "
                                f"{r['course_id']}, which it did not wish for"
                                for r in unwished[:MAX_LISTED]]
        findings.invariants["wins_not_wished"] = len(unwished)
        strangers = sum(row["resident_id"] not in wishes for row in seats)
        if strangers:
            findings.notes.append(f"{strangers} seat(s) held by residents without an entry "
                                  "(first come after the draw); not counted as wins")


def _answers(findings: Findings, tried: dict[str, dict[str, Any]]) -> None:
    """Every answer the crowd got, by request, status and code; 5xx and none counted apart."""
    answers: Counter[str] = Counter()
    for row in tried.values():
        answers.update(row.get("answers") or {})
    findings.answers = dict(sorted(answers.items()))
    server_errors = sum(n for kind, n in answers.items() if kind.split()[1].startswith("5"))
    no_answer = sum(n for kind, n in answers.items() if kind.split()[1] == "0")
    findings.answers |= {"total 5xx": server_errors, "total no answer": no_answer}


def _reach_and_capture(findings: Findings, tried: dict[str, dict[str, Any]],
                       entries: Sequence[asyncpg.Record], group_of: dict[str, str]) -> None:
    """Residents the crowd reached, and (draw modes) whose entry was stored as sent."""
    stored = {row["resident_id"]: (row["entry_id"], list(row["wishes"])) for row in entries}
    draw = findings.mode in ("window", "lottery")
    lost = []
    for group, figures in findings.groups.items():
        members = [row for who, row in tried.items() if group_of.get(who) == group]
        senders = [row for row in members if row.get("tried")]
        figures.tried = len(senders)
        if not draw:
            continue
        captured = [row for row in senders
                    if stored.get(row["resident"], (None, None))[1] == row["wishes"]]
        figures.captured = len(captured)
        figures.capture = round(len(captured) / len(senders), 4) if senders else 0.0
        lost += [row["resident"] for row in senders if row.get("entry_id") is not None
                 and stored.get(row["resident"], (None,))[0] != row["entry_id"]]
    if lost:
        findings.violations.append(f"{len(lost)} resident(s) were told their entry was stored "
                                   f"but it is not (or under another receipt): "
                                   f"{', '.join(lost[:MAX_LISTED])}")
    findings.invariants["entries_told_but_missing"] = len(lost)
    strangers = sum(who not in group_of for who in tried)
    if strangers:
        findings.notes.append(f"{strangers} resident(s) in the tried files are not in the "
                              "population; left out")


def _first_come_shares(findings: Findings, seats: Sequence[asyncpg.Record],
                       group_of: dict[str, str]) -> None:
    won = Counter(group_of[row["resident_id"]] for row in seats if row["resident_id"] in group_of)
    outside = sum(row["resident_id"] not in group_of for row in seats)
    if outside:
        findings.notes.append(f"{outside} seat(s) held by residents outside the population")
    findings.ci_method = ("one run, Wilson 95 % CI (a first-come release cannot be re-drawn; "
                          "pool repeated runs for a narrower one)")
    _shares(findings, [won])


def _draw_shares(findings: Findings, record: dict[str, Any], entries_file: bytes,
                 results_file: bytes, entries: Sequence[asyncpg.Record],
                 seats: Sequence[asyncpg.Record], group_of: dict[str, str],
                 redraws: int) -> None:
    """The published draw's wins, then `redraws` re-draws of the same frozen entries with other
    beacons; the draw's wins must be exactly the entrants' active bookings."""
    resident_of = {row["entry_id"]: row["resident_id"] for row in entries}
    frozen = algorithm.read_entries(entries_file)
    published = algorithm.read_results(results_file)
    wins = [(resident_of.get(r.entry_id), w.course_id) for r in published for w in r.results
            if w.outcome == "won"]
    entrants = set(resident_of.values())
    booked = {(row["resident_id"], row["course_id"]) for row in seats
              if row["resident_id"] in entrants}
    unbooked = [win for win in wins if win not in booked]
    unwon = sorted(booked - set(wins))
    findings.violations += [f"resident {who} won course {course} but holds no seat of it"
                            for who, course in unbooked[:MAX_LISTED]]
    findings.violations += [f"resident {who} holds course {course}, which the draw did not "
                            f"give it" for who, course in unwon[:MAX_LISTED]]
    findings.invariants |= {"wins_not_booked": len(unbooked), "bookings_not_won": len(unwon)}
    if len(frozen) != len(entries):
        findings.violations.append(f"the entries file has {len(frozen)} entries, Postgres "
                                   f"{len(entries)}")
    per_draw = [Counter(group_of.get(who or "", "?") for who, _ in wins)]
    seats_of = {c["course_id"]: c["seats"] for c in record["courses"]}
    for k in range(1, redraws + 1):
        beacon = f"{record['beacon']} / fairness re-draw {k}"
        again = algorithm.draw(record["release_id"], frozen, seats_of, record["tiers"],
                               record["rounds"], beacon)
        per_draw.append(Counter(group_of.get(resident_of.get(e, ""), "?")
                                for winners in again.winners.values() for e in winners))
    findings.ci_method = (f"the published draw pooled with {redraws} offline re-draws of its "
                          f"frozen entries with other beacons; CI: t over the "
                          f"{redraws + 1} draws' shares")
    _shares(findings, per_draw)


def _shares(findings: Findings, per_draw: list[Counter[str]]) -> None:
    """Seat shares of this run (per_draw[0]) and pooled over every draw, with their CIs."""
    this_run = per_draw[0]
    findings.seats_won = sum(this_run[g] for g in findings.groups)
    findings.draws_pooled = len(per_draw)
    totals = [sum(draw[g] for g in findings.groups) for draw in per_draw]
    pooled_total = sum(totals)
    residents = findings.residents
    for group, figures in findings.groups.items():
        figures.seats = this_run[group]
        figures.seat_share = round(100 * this_run[group] / max(1, findings.seats_won), 2)
        figures.seat_share_ci = binomial_ci(this_run[group], findings.seats_won)
        pooled = sum(draw[group] for draw in per_draw)
        figures.pooled_share = round(100 * pooled / max(1, pooled_total), 2)
        if len(per_draw) > 1:
            shares = [100 * draw[group] / max(1, total) for draw, total in zip(
                per_draw, totals, strict=True)]
            half = t95(len(shares) - 1) * statistics.stdev(shares) / math.sqrt(len(shares))
        else:
            low, high = figures.seat_share_ci
            half = (high - low) / 2
        figures.ci_half_width = round(half, 2)
        overall = pooled_total / (residents * len(per_draw)) if residents else 0.0
        figures.win_rate = round(pooled / (figures.population * len(per_draw)), 4) \
            if figures.population else 0.0
        figures.win_ratio = round(figures.win_rate / overall, 3) if overall else 0.0


def _verify_draw(base_url: str, release_id: int, findings: Findings) -> str:
    """`booking verify-draw --url --release`, as anyone would run it."""
    done = subprocess.run([sys.executable, "-m", "booking", "verify-draw", "--url", base_url,
                           "--release", str(release_id)], capture_output=True, text=True,
                          timeout=300, check=False)
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        findings.violations.append(f"booking verify-draw exited {done.returncode}: {said}")
    findings.invariants["verify_draw_failed"] = int(done.returncode != 0)
    return said


def _judge(findings: Findings) -> None:
    failures = findings.failures
    for group, g in findings.groups.items():
        if g.population == 0:
            continue
        if abs(g.pooled_share - g.population_share) > SHARE_POINTS:
            failures.append(f"{group} got {g.pooled_share:.2f} % of the seats for "
                            f"{g.population_share:.2f} % of the residents")
        if group == "bot" and g.pooled_share > BOT_SHARE_MAX:
            failures.append(f"bots got {g.pooled_share:.2f} % of the seats (at most "
                            f"{BOT_SHARE_MAX:.0f} %)")
        if g.ci_half_width > CI_POINTS:
            failures.append(f"{group}'s 95 % CI is +-{g.ci_half_width:.2f} points (at most "
                            f"{CI_POINTS:.0f})")
        if not WIN_RATIO[0] <= g.win_ratio <= WIN_RATIO[1]:
            failures.append(f"{group}'s win rate is {g.win_ratio:.3f} of the overall")
        if g.capture is not None and g.capture < CAPTURE_MIN:
            failures.append(f"{group}'s entry capture is {100 * g.capture:.2f} %")
        if g.tried < g.population:
            failures.append(f"{g.population - g.tried} {group} resident(s) never sent a "
                            "request (the crowd did not reach them)")
    if findings.violations:
        failures.append(f"{len(findings.violations)} invariant violation(s)")


# --- the command ------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.fairness_check",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", type=int, required=True, help="the release id")
    p.add_argument("--groups", type=Path, required=True,
                   help="the population file (loadtest/fairness/population.py)")
    p.add_argument("--tried", type=Path, nargs="*", default=None,
                   help="the crowd's tried-*.jsonl files or their folders (default: the "
                        "groups file's folder)")
    p.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('BOOKING_PORT', '8000')}",
                   help="the service (default http://127.0.0.1:$BOOKING_PORT or :8000)")
    p.add_argument("--redraws", type=int, default=REDRAWS,
                   help=f"offline re-draws pooled with a draw's own (default {REDRAWS})")
    return p


def inputs_of(args: argparse.Namespace) -> Inputs:
    try:
        population = populations.read(args.groups)
    except ValueError as exc:
        raise CannotCheck(str(exc)) from exc
    paths = args.tried if args.tried else [args.groups.parent]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CannotCheck(f"no such file or folder: {', '.join(missing)}")
    return Inputs(args.release, population, read_tried(paths), args.url.rstrip("/"),
                  max(0, args.redraws))


def report(findings: Findings) -> int:
    print("\n".join(findings.lines()))
    print(json.dumps(findings.as_json()), flush=True)
    return 0 if findings.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        inputs = inputs_of(args)
        with running(Settings.from_env(), quiet=True) as ready:
            findings = asyncio.run(check(ready, inputs))
    except (CannotCheck, ConfigError, httpx.HTTPError, OSError) as exc:
        print(f"fairness check: cannot check: {exc}", file=sys.stderr)
        return 2
    return report(findings)


if __name__ == "__main__":
    sys.exit(main())
