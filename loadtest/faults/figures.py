"""The figures of a scenario: what was answered and how fast, how it recovered, what the
service's metrics and log say of seats and failed writes, and the verdict on all of it.

`judge` and `judge_readiness` turn the rules every scenario shares (and its `Expect`) into
violations; `findings` names what the checker cannot see once the dust settled (warnings).
Answers are labelled `<request> <status> <code>` (`grab 409 sold_out`, `swap 201 confirmed`,
`pay 200 confirmed`, `join 201 waiting`, ...).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from booking.core.auth import mint
from loadtest.faults.rush import Answer


@dataclass(slots=True)
class Marks:
    """When the fault began and when the broken thing was back (time.monotonic())."""

    start: float = 0.0
    end: float = 0.0
    disturbed: float | None = None  # when the lab began to interfere, if before `start`
    calm: float | None = None  # when the lab stopped interfering, if after `end`
    what: str = ""
    orphans_never_written: int = 0
    notes: dict[str, object] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Seats:
    """Seats taken and writes failed during a scenario (from /metrics and the service log)."""

    taken: int = 0
    failed_writes: int = 0  # each gives its seat back at once, or leaves it to the reconciler
    reconciler_gave_back: int = 0
    reconciler_restored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"taken {self.taken}, failed writes {self.failed_writes} "
                f"(by reason: {self.reasons or '-'}), the reconciler gave back "
                f"{self.reconciler_gave_back} and restored {self.reconciler_restored}")


@dataclass(slots=True)
class Expect:
    """What a scenario must show, besides the rules every scenario shares."""

    unavailable_during: bool = True  # 503s while the store is down
    max_latency_s: float = 6.0  # no request slower than this, at any time of the run
    transport_errors_within_s: float | None = None  # after the fault start; None: none at all
    recover_within_s: float = 5.0  # first 201 after the store is back
    not_ready_during: bool = True  # /ready answers 503 while the store is down
    unavailable_grace_s: float = 2.0  # 503s may still end this long after the fault ended


@dataclass(slots=True)
class Figures:
    scenario: str
    fault: str
    requests: int = 0
    rush_s: float = 0.0
    fault_s: float = 0.0
    during: dict[str, int] = field(default_factory=dict)
    overall: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    recovery: dict[str, float | None] = field(default_factory=dict)
    seats: Seats = field(default_factory=Seats)
    readiness: dict[str, object] = field(default_factory=dict)
    settled_s: float | None = None
    unanswered: dict[str, int] = field(default_factory=dict)  # requests open at the end, by kind
    check: str = ""
    notes: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        during = sum(self.during.values())
        out = [f"== {self.scenario}: {self.fault}",
               f"  requests: {self.requests} in {self.rush_s:.1f} s; during the fault "
               f"({self.fault_s:.1f} s): {during}",
               f"    during: {_counts(self.during)}",
               f"    whole run: {_counts(self.overall)}",
               "  latency ms: " + ", ".join(f"{k} {v:.0f}" for k, v in self.latency_ms.items()),
               "  recovery s: " + ", ".join(f"{k} {_num(v)}" for k, v in self.recovery.items()),
               f"  seats: {self.seats.line()}",
               "  /ready: " + ", ".join(f"{k} {v}" for k, v in self.readiness.items()),
               "  still unanswered when the rush ended: "
               + (_counts(self.unanswered) if self.unanswered else "none")]
        out += [f"  {k}: {v}" for k, v in self.notes.items()]
        out.append(f"  reconciler settled the gate {_num(self.settled_s)} s after the rush")
        out += ["  " + line for line in self.check.splitlines()]
        out += [f"  WARNING: {w}" for w in self.warnings]
        out += [f"  VIOLATION: {v}" for v in self.violations]
        out.append(f"  verdict: {'PASS' if self.ok else 'FAIL'}")
        return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _num(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def count(counts: dict[str, int], answer: str) -> int:
    """How many answers end with `answer` (e.g. `503 unavailable`), whatever the request."""
    return sum(n for label, n in counts.items() if label.endswith(answer))


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def answer_figures(figures: Figures, answers: list[Answer], marks: Marks) -> None:
    """Counts during the fault and overall, latencies, and how soon grabs succeeded again."""
    during = [a for a in answers if marks.start <= a.started < marks.end]
    figures.requests = len(answers)
    figures.fault_s = marks.end - marks.start
    figures.during = dict(Counter(a.label for a in during))
    figures.overall = dict(Counter(a.label for a in answers))
    all_ms = [(a.ended - a.started) * 1000 for a in answers]
    during_ms = [(a.ended - a.started) * 1000 for a in during]
    figures.latency_ms = {"p50": percentile(all_ms, 0.5), "p99": percentile(all_ms, 0.99),
                          "max": max(all_ms, default=0.0),
                          "p99 during": percentile(during_ms, 0.99),
                          "max during": max(during_ms, default=0.0)}
    after = [a for a in answers if a.ended >= marks.end]
    first_created = min((a.ended for a in after if (a.kind, a.status) == ("grab", 201)),
                        default=None)
    last_503 = max((a.ended for a in after if a.status == 503), default=None)
    figures.recovery = {
        "first 201 after": None if first_created is None else first_created - marks.end,
        "last 503 after": None if last_503 is None else last_503 - marks.end}


def judge(figures: Figures, answers: list[Answer], marks: Marks, expect: Expect) -> None:
    """The rules: no 500, no 5xx but 503 `unavailable`, and that one only around the fault;
    503s while down; only answers the API documents; bounded latency; no hangs or broken
    connections (except right after a worker dies); recovery; checker clean."""
    v = figures.violations
    server_errors = Counter(a.label for a in answers
                            if a.status >= 500 and (a.status, a.code) != (503, "unavailable"))
    if server_errors:
        v.append(f"server errors other than 503 unavailable: {dict(server_errors)}")
    outside = Counter(a.label for a in answers if a.status == 503 and _outside(a, marks, expect))
    if outside:
        v.append(f"503 outside the fault (before it, or over {expect.unavailable_grace_s:.0f} s "
                 f"after it): {dict(outside)}")
    undocumented = [a for a in answers if a.problem is not None]
    if undocumented:
        v.append(f"{len(undocumented)} answer(s) the API does not document for the request: "
                 f"{dict(Counter(a.label for a in undocumented))}; first: "
                 f"{undocumented[0].kind} {undocumented[0].problem}")
    if expect.unavailable_during and not any(
            a.status == 503 for a in answers if marks.start <= a.started < marks.end):
        v.append("no 503 unavailable while the store was down")
    slowest = max(((a.ended - a.started) for a in answers), default=0.0)
    if slowest > expect.max_latency_s:
        v.append(f"a request took {slowest:.1f} s (bound {expect.max_latency_s:.1f} s)")
    _judge_transport(v, answers, marks, expect)
    first = figures.recovery.get("first 201 after")
    if first is None or first > expect.recover_within_s:
        v.append(f"no 201 within {expect.recover_within_s:.0f} s after the fault ended "
                 f"(first after {_num(first)} s)")


def _outside(answer: Answer, marks: Marks, expect: Expect) -> bool:
    """Whether a request lay wholly before the lab interfered or began after the fault (and
    its grace) was over."""
    began = marks.start if marks.disturbed is None else min(marks.disturbed, marks.start)
    ended = marks.end if marks.calm is None else max(marks.calm, marks.end)
    return answer.ended < began or answer.started > ended + expect.unavailable_grace_s


def judge_unanswered(figures: Figures, unanswered: list[tuple[str, float]]) -> None:
    """A request the service never answered (still open when the rush had ended and drained)."""
    figures.unanswered = dict(Counter(kind for kind, _ in unanswered))
    if unanswered:
        figures.violations.append(f"{len(unanswered)} request(s) never answered: "
                                  f"{figures.unanswered}")


def judge_readiness(figures: Figures, probes: list[tuple[float, int]], marks: Marks,
                    expect: Expect) -> None:
    """/ready must say no while the store is down and yes again soon after it is back."""
    during = Counter(status for at, status in probes if marks.start <= at < marks.end)
    back = min((at for at, status in probes if at >= marks.end and status == 200), default=None)
    after = [status for at, status in probes if at >= marks.end]
    figures.readiness = {
        "during": ", ".join(f"{status} x{n}" for status, n in sorted(during.items())) or "-",
        "200 again after s": _num(None if back is None else max(back - marks.end, 0.0)),
        "last": after[-1] if after else "-"}
    if expect.not_ready_during and not any(status != 200 for status in during.elements()):
        figures.violations.append("/ready kept answering 200 while the store was down")
    if back is None or back - marks.end > expect.recover_within_s or after[-1] != 200:
        figures.violations.append("/ready did not answer 200 again soon after the fault ended")


def _judge_transport(v: list[str], answers: list[Answer], marks: Marks, expect: Expect) -> None:
    window = expect.transport_errors_within_s
    failed = [a for a in answers if a.status == 0]
    if window is not None:
        # in flight when the worker died, or sent on a connection to it right after
        failed = [a for a in failed if not (a.ended >= marks.start
                                            and a.started <= marks.start + window)]
    if failed:
        v.append(f"{len(failed)} request(s) without an HTTP answer: "
                 f"{dict(Counter(a.code for a in failed))}")


# ------------------------------------------------------------------------ metrics and the ledger


async def read_metrics(base_url: str) -> dict[str, float]:
    """The grab outcomes and reconciler counters from /metrics (summed over the workers);
    empty when the service does not answer (a hung worker: the rules say so elsewhere)."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    wanted = ("booking_grabs_total{", "booking_reconciler_seats_total{")
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


REFUND_LIST_LIMIT = 1000  # GET /v1/payments/refunds lists the oldest this many


async def judge_refunds(figures: Figures, base_url: str, secret: str, owed: set[str]) -> None:
    """Every paid booking the crowd cancelled or swapped away before the cancel deadline is owed
    a refund, recorded with the cancel: the operators' refund list must show it."""
    if not owed:
        figures.notes["refunds owed by the crowd's cancels and swaps"] = "none"
        return
    headers = {"Authorization": f"Bearer {mint(secret, 'operator', 'fault-lab')}"}
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            response = await http.get("/v1/payments/refunds", headers=headers)
        items = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        items = None
    if not isinstance(items, list):
        figures.violations.append("the refund list (GET /v1/payments/refunds) did not answer")
        return
    missing = owed - {item.get("booking_id") for item in items if isinstance(item, dict)}
    figures.notes["refunds owed by the crowd's cancels and swaps"] = (
        f"{len(owed)}, of which the refund list shows {len(owed) - len(missing)}")
    if missing and len(items) >= REFUND_LIST_LIMIT:
        figures.notes["refunds not shown"] = (f"{len(missing)}: the list is full "
                                              f"({len(items)} older ones); left to the checker")
    elif missing:
        figures.violations.append(f"{len(missing)} paid booking(s) the crowd cancelled or "
                                  f"swapped away owe a refund the refund list does not show, "
                                  f"e.g. {sorted(missing)[0]}")


NOT_COMMITTED = re.compile(r"booking [0-9a-f-]{36} not committed: ([^\"\n]*)")


def write_failures(lines: Iterable[str]) -> Counter[str]:
    """Failed ledger writes by reason, from the service's 'booking … not committed: …' lines
    (JSON or plain: whatever the log format, the message is the same)."""
    reasons: Counter[str] = Counter()
    for line in lines:
        found = NOT_COMMITTED.search(line)
        if found:
            reasons[reason_key(found.group(1))] += 1
    return reasons


def reason_key(reason: str) -> str:
    """`QueryCanceledError: canceling…` -> `QueryCanceledError`; `no connection: OSError: …` ->
    `no connection: OSError`; a sentence (`waited too long for the database`) stays whole."""
    prefix = ""
    if reason.startswith("no connection: "):
        prefix, reason = "no connection: ", reason.removeprefix("no connection: ")
    head = reason.split(":", 1)[0]
    return prefix + (head if " " not in head else reason)


def seat_figures(before: dict[str, float], after: dict[str, float],
                 reasons: Counter[str]) -> Seats:
    def delta(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    return Seats(taken=delta('booking_grabs_total{outcome="taken"}'),
                 failed_writes=delta('booking_grabs_total{outcome="not_committed"}'),
                 reconciler_gave_back=delta('booking_reconciler_seats_total{action="given_back"}'),
                 reconciler_restored=delta('booking_reconciler_seats_total{action="restored"}'),
                 reasons=dict(reasons))


REDIS_LOST = ("redis", "small-pool")  # scenarios whose Redis loses its data on purpose
NEVER_SENT = ("FileNotFoundError", "ConnectionRefusedError")  # no connection: nothing was written


def findings(figures: Figures) -> list[str]:
    """What the checker cannot see once the dust settled, but the figures show: the gate lacking
    bookings Postgres had (a seat given back while its INSERT was still in flight), seats the
    gate gave that Postgres did not have, writes that never reached Postgres left pending (the
    course reads as sold out meanwhile). (A grab answered with a dead booking is a violation:
    an answer the API does not document.)"""
    found, seats = [], figures.seats
    if seats.reconciler_restored and figures.scenario not in REDIS_LOST:
        found.append(f"a reload restored {seats.reconciler_restored} holder(s) the gate had lost "
                     f"though Redis kept its data: seats given back while their INSERT was "
                     f"still in flight after BOOKING_PENDING_TIMEOUT, which then committed")
    refused = {r: n for r, n in seats.reasons.items() if r.startswith("refused by")}
    if refused:
        found.append(f"the gate gave seats Postgres did not have (the backstop refused them): "
                     f"{refused}")
    never_sent = sum(n for r, n in seats.reasons.items() if r.endswith(NEVER_SENT))
    if never_sent and seats.reconciler_gave_back >= never_sent:
        found.append(f"{never_sent} write(s) never reached Postgres (no connection), and the "
                     f"reconciler gave back {seats.reconciler_gave_back} seat(s) only after the "
                     f"pending timeout: seats of writes that surely failed were held back "
                     f"meanwhile ({count(figures.during, 'grab 409 sold_out')} grab(s) "
                     f"heard sold_out during the fault)")
    return found
