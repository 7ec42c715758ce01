"""The draw `booking-draw/v1` and its two files: the one implementation that the service runs and
that `booking verify-draw` re-runs. Standard library only, so anyone can re-check a draw.

    seed     = SHA-256("booking-draw/v1|" + release_id + "|" + entries_digest + "|" + beacon)
    ticket   = HMAC-SHA256(key = the seed's 32 bytes, message = entry_id)
    rank     = index of the entry's tier among the ranked tiers (no listed tier: after them all)
    order(k) = by rank, then ticket ascending when k is odd, descending when k is even (snake)
    for k in 1 .. rounds, for e in order(k): if e has won fewer than e.cap seats, e wins its
        best-ranked wish that has a seat left and that it has not won yet
    waitlist(course) = entries in order(1) that wished for it, did not win it, and won < cap

Both files are JSON Lines in one exact spelling (no spaces, keys in a fixed order, raw UTF-8, a
"\\n" after every line, sorted by entry_id in code point order, which is UTF-8 byte order); the
readers accept nothing else, because the files' digests are what the draw commits to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALGORITHM = "booking-draw/v1"


class DrawFileError(ValueError):
    """A file (or a draw record) that is not in the exact format; the message says where."""


class DrawMismatch(Exception):
    """verify(): the first difference between the published draw and its re-run."""


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    tier: str | None
    cap: int
    wishes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WishResult:
    course_id: int
    outcome: str  # "won" | "waitlist" | "none"
    position: int | None = None  # 1-based, only for "waitlist"


@dataclass(frozen=True, slots=True)
class EntryResult:
    entry_id: str
    ticket: str
    results: tuple[WishResult, ...]  # in wish order


@dataclass(frozen=True, slots=True)
class Drawn:
    entries_digest: str
    seed: str
    results: tuple[EntryResult, ...]  # in entry_id order
    winners: dict[int, list[str]]  # course_id -> entry_ids that won it, in the order they won
    waitlists: dict[int, list[str]]  # course_id -> entry_ids in waitlist position order


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commitment(beacon: str) -> str:
    return digest(beacon.encode())


def ranked_tiers(tiers: Sequence[tuple[str, Any]]) -> list[str]:
    """(name, opens_at) pairs -> the names, earliest opens_at first (list order on ties)."""
    return [name for name, _ in sorted(tiers, key=lambda tier: tier[1])]


def seed_of(release_id: int | str, entries_digest: str, beacon: str) -> str:
    return digest(f"{ALGORITHM}|{release_id}|{entries_digest}|{beacon}".encode())


def ticket_of(seed: str, entry_id: str) -> str:
    return hmac.new(bytes.fromhex(seed), entry_id.encode(), hashlib.sha256).hexdigest()


# -- the files ---------------------------------------------------------------------------------

def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _entry_line(entry: Entry) -> bytes:
    return _line({"entry_id": entry.entry_id, "tier": entry.tier, "cap": entry.cap,
                  "wishes": list(entry.wishes)})


def _result_line(result: EntryResult) -> bytes:
    wishes = [{"course_id": wish.course_id, "outcome": wish.outcome}
              | ({"position": wish.position} if wish.outcome == "waitlist" else {})
              for wish in result.results]
    return _line({"entry_id": result.entry_id, "ticket": result.ticket, "results": wishes})


def entries_file(entries: Iterable[Entry]) -> bytes:
    return b"".join(_entry_line(entry) for entry in sorted(entries, key=lambda e: e.entry_id))


def results_file(results: Iterable[EntryResult]) -> bytes:
    return b"".join(_result_line(result) for result in sorted(results, key=lambda r: r.entry_id))


def _whole(value: Any, least: int) -> bool:
    return type(value) is int and value >= least


def _keys(obj: Any, *keys: str) -> bool:
    return isinstance(obj, dict) and list(obj) == list(keys)


def _entry(obj: Any) -> Entry:
    if not _keys(obj, "entry_id", "tier", "cap", "wishes"):
        raise DrawFileError("is not an object of exactly entry_id, tier, cap, wishes, in order")
    entry_id, tier, cap, wishes = obj.values()
    if not isinstance(entry_id, str) or not entry_id:
        raise DrawFileError("has an entry_id that is not a non-empty string")
    if tier is not None and not isinstance(tier, str):
        raise DrawFileError("has a tier that is neither a string nor null")
    if not _whole(cap, 0):
        raise DrawFileError("has a cap that is not a whole number of at least 0")
    if not isinstance(wishes, list) or not wishes or not all(_whole(c, 1) for c in wishes):
        raise DrawFileError("has wishes that are not a non-empty list of course ids")
    if len(set(wishes)) != len(wishes):
        raise DrawFileError("wishes for the same course twice")
    return Entry(entry_id, tier, cap, tuple(wishes))


def _wish(obj: Any) -> WishResult:
    if _keys(obj, "course_id", "outcome") and obj["outcome"] in ("won", "none"):
        course_id, position = obj["course_id"], None
    elif _keys(obj, "course_id", "outcome", "position") and obj["outcome"] == "waitlist":
        course_id, position = obj["course_id"], obj["position"]
        if not _whole(position, 1):
            raise DrawFileError("has a waitlist position that is not a whole number of at least 1")
    else:
        raise DrawFileError("has a result that is not {course_id, outcome: won|none} or "
                            "{course_id, outcome: waitlist, position}")
    if not _whole(course_id, 1):
        raise DrawFileError("has a result whose course_id is not a course id")
    return WishResult(course_id, obj["outcome"], position)


def _result(obj: Any) -> EntryResult:
    if not _keys(obj, "entry_id", "ticket", "results"):
        raise DrawFileError("is not an object of exactly entry_id, ticket, results, in order")
    entry_id, ticket, results = obj.values()
    if not isinstance(entry_id, str) or not entry_id:
        raise DrawFileError("has an entry_id that is not a non-empty string")
    if not isinstance(ticket, str) or len(ticket) != 64 or set(ticket) - set("0123456789abcdef"):
        raise DrawFileError("has a ticket that is not 64 lowercase hex digits")
    if not isinstance(results, list) or not results:
        raise DrawFileError("has results that are not a non-empty list")
    wishes = tuple(_wish(wish) for wish in results)
    if len({wish.course_id for wish in wishes}) != len(wishes):
        raise DrawFileError("has two results for the same course")
    return EntryResult(entry_id, ticket, wishes)


def _read(data: bytes, parse: Callable[[Any], Any], write: Callable[[Any], bytes]) -> list[Any]:
    """Each line parsed, checked to be spelled exactly as `write` spells it, and in order."""
    lines = data.split(b"\n")
    if lines[-1]:
        raise DrawFileError(f"line {len(lines)}: the file does not end with a newline")
    rows: list[Any] = []
    for number, raw in enumerate(lines[:-1], start=1):
        try:
            row = parse(json.loads(raw.decode()))
        except UnicodeDecodeError:
            raise DrawFileError(f"line {number}: is not UTF-8") from None
        except DrawFileError as exc:
            raise DrawFileError(f"line {number}: {exc}") from None
        except (ValueError, RecursionError):
            raise DrawFileError(f"line {number}: is not one JSON object") from None
        if write(row) != raw + b"\n":
            raise DrawFileError(f"line {number}: is not spelled exactly as {ALGORITHM} spells "
                                "it (no spaces, keys in order, raw UTF-8)")
        if rows and row.entry_id <= rows[-1].entry_id:
            raise DrawFileError(f"line {number}: entry {row.entry_id} is out of entry_id order")
        rows.append(row)
    return rows


def read_entries(data: bytes) -> list[Entry]:
    return _read(data, _entry, _entry_line)


def read_results(data: bytes) -> list[EntryResult]:
    return _read(data, _result, _result_line)


# -- the draw ----------------------------------------------------------------------------------

def allocate(entries: Sequence[Entry], tickets: Mapping[str, str], seats: Mapping[int, int],
             tiers: Sequence[str], rounds: int,
             ) -> tuple[tuple[EntryResult, ...], dict[int, list[str]], dict[int, list[str]]]:
    """The snake draw on given tickets: (results in entry_id order, winners, waitlists).

    A course not in `seats` has none. Equal tickets (only ever given by hand) fall back to
    entry_id, so the outcome never depends on the order of `entries`.
    """
    rank = {name: index for index, name in enumerate(tiers)}
    odd = sorted(entries, key=lambda e: (rank.get(e.tier, len(tiers)), tickets[e.entry_id],
                                         e.entry_id))
    even = sorted(reversed(odd), key=lambda e: rank.get(e.tier, len(tiers)))
    won: dict[str, list[int]] = {entry.entry_id: [] for entry in entries}
    if len(won) != len(entries):
        raise ValueError("two entries have the same entry_id")
    left = dict(seats)
    winners: dict[int, list[str]] = {course: [] for course in seats}
    for k in range(1, rounds + 1):
        progress = False
        for entry in odd if k % 2 else even:
            mine = won[entry.entry_id]
            if len(mine) >= entry.cap:
                continue
            for course in entry.wishes:
                if left.get(course, 0) > 0 and course not in mine:
                    left[course] -= 1
                    mine.append(course)
                    winners.setdefault(course, []).append(entry.entry_id)
                    progress = True
                    break
        if not progress:  # nothing changed, so no later round can change anything either
            break
    waitlists: dict[int, list[str]] = {course: [] for course in seats}
    for entry in odd:
        mine = won[entry.entry_id]
        for course in entry.wishes:
            if course not in mine and len(mine) < entry.cap:
                waitlists.setdefault(course, []).append(entry.entry_id)
    position = {(course, entry_id): index
                for course, queue in waitlists.items() for index, entry_id in enumerate(queue, 1)}
    results = tuple(
        EntryResult(entry.entry_id, tickets[entry.entry_id], tuple(
            WishResult(course, "won") if course in won[entry.entry_id]
            else WishResult(course, "waitlist", position[course, entry.entry_id])
            if (course, entry.entry_id) in position else WishResult(course, "none")
            for course in entry.wishes))
        for entry in sorted(entries, key=lambda e: e.entry_id))
    return results, winners, waitlists


def draw(release_id: int | str, entries: Sequence[Entry], seats: Mapping[int, int],
         tiers: Sequence[str], rounds: int, beacon: str) -> Drawn:
    """The whole draw of a release: its entries file's digest, the seed, the tickets, the snake."""
    entries_digest = digest(entries_file(entries))
    seed = seed_of(release_id, entries_digest, beacon)
    tickets = {entry.entry_id: ticket_of(seed, entry.entry_id) for entry in entries}
    return Drawn(entries_digest, seed, *allocate(entries, tickets, seats, tiers, rounds))


# -- re-checking a published draw --------------------------------------------------------------

def _record(record: Mapping[str, Any]) -> tuple[str, int, list[str], dict[int, int], int]:
    """(release_id, rounds, tiers, seats, entries_count) of a draw record, or DrawFileError."""
    def bad(name: str, what: str) -> DrawFileError:
        return DrawFileError(f"the draw record's {name} is missing or not {what}")

    if not isinstance(record, Mapping):
        raise DrawFileError("the draw record is not a JSON object")
    for name in ("algorithm", "entries_digest", "beacon_commitment", "beacon", "seed",
                 "results_digest"):
        if not isinstance(record.get(name), str):
            raise bad(name, "a string")
    release_id = record.get("release_id")
    if not (isinstance(release_id, str) or _whole(release_id, 0)):
        raise bad("release_id", "a release id")
    for name in ("rounds", "entries_count"):
        if not _whole(record.get(name), 0):
            raise bad(name, "a whole number")
    tiers = record.get("tiers")
    if not isinstance(tiers, list) or not all(isinstance(name, str) for name in tiers):
        raise bad("tiers", "a list of tier names")
    courses = record.get("courses")
    if not isinstance(courses, list) or not all(
            isinstance(c, dict) and _whole(c.get("course_id"), 1) and _whole(c.get("seats"), 0)
            for c in courses):
        raise bad("courses", "a list of {course_id, seats}")
    seats = {course["course_id"]: course["seats"] for course in courses}
    return str(release_id), record["rounds"], tiers, seats, record["entries_count"]


def _first_difference(published: Sequence[EntryResult], rerun: Sequence[EntryResult]) -> str:
    for mine, theirs in zip(published, rerun, strict=False):
        if mine.entry_id != theirs.entry_id:
            return (f"the results file has entry {mine.entry_id} where the re-run draw has "
                    f"entry {theirs.entry_id}")
        if mine != theirs:
            return (f"entry {mine.entry_id}: the results file says "
                    f"{_result_line(mine).decode().strip()}, the re-run draw gives "
                    f"{_result_line(theirs).decode().strip()}")
    if len(published) > len(rerun):
        return f"the results file has an extra entry {published[len(rerun)].entry_id}"
    return f"the results file lacks entry {rerun[len(published)].entry_id}"


def verify(record: Mapping[str, Any], entries: bytes, results: bytes) -> str:
    """Re-check a published draw from its record and files: the one "verified ..." line.

    Raises DrawMismatch naming the first difference (algorithm, entries digest, entries count,
    beacon against commitment, seed, each ticket, the re-run's results, the results digest), or
    DrawFileError when the record itself is not a draw record.
    """
    release_id, rounds, tiers, seats, count = _record(record)
    if record["algorithm"] != ALGORITHM:
        raise DrawMismatch(f"the draw uses algorithm {record['algorithm']!r}, "
                           f"which this tool does not know (it knows {ALGORITHM})")
    entries_digest = digest(entries)
    if entries_digest != record["entries_digest"]:
        raise DrawMismatch(f"the entries file's SHA-256 is {entries_digest}, but the draw "
                           f"record says {record['entries_digest']}")
    try:
        listed = read_entries(entries)
    except DrawFileError as exc:
        raise DrawMismatch(f"the entries file, {exc}") from None
    if len(listed) != count:
        raise DrawMismatch(f"the entries file has {len(listed)} entries, but the draw record "
                           f"says {count}")
    if commitment(record["beacon"]) != record["beacon_commitment"]:
        raise DrawMismatch(f"the beacon's SHA-256 is {commitment(record['beacon'])}, not the "
                           f"commitment {record['beacon_commitment']} published before the draw")
    seed = seed_of(release_id, entries_digest, record["beacon"])
    if seed != record["seed"]:
        raise DrawMismatch(f"the seed should be {seed}, but the draw record says {record['seed']}")
    try:
        published = read_results(results)
    except DrawFileError as exc:
        raise DrawMismatch(f"the results file, {exc}") from None
    for row in published:
        if row.ticket != ticket_of(seed, row.entry_id):
            raise DrawMismatch(f"entry {row.entry_id}: its ticket should be "
                               f"{ticket_of(seed, row.entry_id)}, the results file says "
                               f"{row.ticket}")
    rerun = draw(release_id, listed, seats, tiers, rounds, record["beacon"]).results
    if results_file(rerun) != results:
        raise DrawMismatch(_first_difference(published, rerun))
    results_digest = digest(results)
    if results_digest != record["results_digest"]:
        raise DrawMismatch(f"the results file's SHA-256 is {results_digest}, but the draw "
                           f"record says {record['results_digest']}")
    return (f"verified {ALGORITHM} release {release_id}: {count} entries, {len(seats)} courses, "
            f"{rounds} rounds; digests, beacon, seed, {count} tickets and the re-run agree "
            f"(seed {seed[:12]}…, results {results_digest[:12]}…)")
