"""The draw `booking-draw/v1` (booking.releases.draw) and `booking verify-draw`, without stores.

A hand-worked snake, a tier example, the exact bytes of both files, seed and tickets recomputed
here with hashlib and hmac, properties over random releases (hypothesis), and the re-check
failing on any single changed byte, both in Python and as the `booking verify-draw` command.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from booking.releases.draw import (
    ALGORITHM,
    DrawFileError,
    DrawMismatch,
    Entry,
    EntryResult,
    WishResult,
    allocate,
    commitment,
    digest,
    draw,
    entries_file,
    ranked_tiers,
    read_entries,
    read_results,
    results_file,
    seed_of,
    ticket_of,
    verify,
)

# No example database: it would be a folder in the working tree.
PROPERTIES = settings(database=None, deadline=None, max_examples=300)


# -- the snake and the tiers -------------------------------------------------------------------

def test_a_hand_worked_snake() -> None:
    """Three entries, courses 10 and 20 with 2 seats each, 2 rounds; tickets e2 < e3 < e1.

    round 1, ticket ascending  (e2, e3, e1): e2 wins 10 (10: 1 left), e3 wins 20 (20: 1 left),
                                             e1 wins 10 (10: 0 left)
    round 2, ticket descending (e1, e3, e2): e1 wins 20 (20: 0 left), e3 is at its cap of 1,
                                             e2 finds no seat in 20 (it won 10 already)
    waitlists, in round 1's order: 20: e2 (won 1 of cap 2); 10: nobody (e3 is at its cap).
    Without the snake e2 would have picked first again and taken 20's last seat from e1.
    """
    entries = [Entry("e1", None, 2, (10, 20)), Entry("e2", None, 2, (10, 20)),
               Entry("e3", None, 1, (20, 10))]
    tickets = {"e1": "c0" * 32, "e2": "a0" * 32, "e3": "b0" * 32}
    results, winners, waitlists = allocate(entries, tickets, {10: 2, 20: 2}, [], 2)
    assert results == (
        EntryResult("e1", "c0" * 32, (WishResult(10, "won"), WishResult(20, "won"))),
        EntryResult("e2", "a0" * 32, (WishResult(10, "won"), WishResult(20, "waitlist", 1))),
        EntryResult("e3", "b0" * 32, (WishResult(20, "won"), WishResult(10, "none"))),
    )
    assert winners == {10: ["e2", "e1"], 20: ["e3", "e1"]}
    assert waitlists == {10: [], 20: ["e2"]}
    # One round only: e1 gets no second seat and waits for 20 behind e2.
    results, winners, waitlists = allocate(entries, tickets, {10: 2, 20: 2}, [], 1)
    assert winners == {10: ["e2", "e1"], 20: ["e3"]}
    assert waitlists == {10: [], 20: ["e2", "e1"]}


def test_a_senior_with_the_worst_ticket_still_wins_first() -> None:
    entries = [Entry("senior", "senior", 1, (1,)), Entry("member", "member", 1, (1,)),
               Entry("guest", None, 1, (1,)), Entry("unnamed", "vip", 1, (1,))]
    tickets = {"senior": "ff" * 32, "member": "ee" * 32, "guest": "11" * 32,
               "unnamed": "00" * 32}
    _, winners, waitlists = allocate(entries, tickets, {1: 1}, ["senior", "member"], 1)
    assert winners == {1: ["senior"]}
    # A tier the release does not name counts as none: after every named tier, by ticket.
    assert waitlists == {1: ["member", "unnamed", "guest"]}


def test_tiers_rank_by_opening_and_keep_list_order_on_ties() -> None:
    assert ranked_tiers([("member", "2026-09-01T09:00:00Z"), ("senior", "2026-09-01T08:00:00Z"),
                         ("veteran", "2026-09-01T08:00:00Z")]) == ["senior", "veteran", "member"]


def test_a_course_the_draw_was_not_told_about_has_no_seats() -> None:
    results, winners, waitlists = allocate([Entry("a", None, 2, (9, 1))], {"a": "00" * 32},
                                           {1: 1}, [], 2)
    assert results[0].results == (WishResult(9, "waitlist", 1), WishResult(1, "won"))
    assert winners == {1: ["a"]} and waitlists == {1: [], 9: ["a"]}


# -- the files ---------------------------------------------------------------------------------

SMALL = [Entry("z", None, 1, (5,)), Entry("é-1", "长者", 2, (3, 4))]
SMALL_ENTRIES = ('{"entry_id":"z","tier":null,"cap":1,"wishes":[5]}\n'
                 '{"entry_id":"é-1","tier":"长者","cap":2,"wishes":[3,4]}\n').encode()
SMALL_RESULTS = [EntryResult("z", "0f" * 32, (WishResult(5, "none"),)),
                 EntryResult("é-1", "ab" * 32, (WishResult(3, "won"),
                                                WishResult(4, "waitlist", 2)))]
SMALL_RESULTS_FILE = (
    '{"entry_id":"z","ticket":"' + "0f" * 32 + '","results":[{"course_id":5,"outcome":"none"}]}\n'
    '{"entry_id":"é-1","ticket":"' + "ab" * 32 + '","results":[{"course_id":3,"outcome":"won"},'
    '{"course_id":4,"outcome":"waitlist","position":2}]}\n').encode()


def test_both_files_have_exact_bytes_and_round_trip() -> None:
    assert entries_file(reversed(SMALL)) == SMALL_ENTRIES
    assert read_entries(SMALL_ENTRIES) == SMALL
    assert results_file(reversed(SMALL_RESULTS)) == SMALL_RESULTS_FILE
    assert read_results(SMALL_RESULTS_FILE) == SMALL_RESULTS
    assert results_file(read_results(SMALL_RESULTS_FILE)) == SMALL_RESULTS_FILE
    assert entries_file([]) == b"" and read_entries(b"") == []


@pytest.mark.parametrize(("data", "line"), [
    (b'{"entry_id": "a","tier":null,"cap":1,"wishes":[1]}\n', 1),           # a space
    (b'{"tier":null,"entry_id":"a","cap":1,"wishes":[1]}\n', 1),            # key order
    (b'{"entry_id":"\\u00e9","tier":null,"cap":1,"wishes":[1]}\n', 1),      # escaped, not raw
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1]}', 1),              # no last newline
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1]}\r\n', 1),          # CRLF
    (b'{"entry_id":"b","tier":null,"cap":1,"wishes":[1]}\n'
     b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1]}\n', 2),            # out of order
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1]}\n'
     b'{"entry_id":"a","tier":null,"cap":1,"wishes":[2]}\n', 2),            # the same entry twice
    (b'{"entry_id":"a","tier":null,"cap":2,"wishes":[1,1]}\n', 1),          # a wish twice
    (b'{"entry_id":"a","tier":null,"cap":true,"wishes":[1]}\n', 1),         # a boolean cap
    (b'{"entry_id":"a","tier":null,"cap":-1,"wishes":[1]}\n', 1),
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[]}\n', 1),
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1.0]}\n', 1),
    (b'{"entry_id":"a","tier":7,"cap":1,"wishes":[1]}\n', 1),
    (b'{"entry_id":"a","tier":null,"cap":1,"wishes":[1],"x":1}\n', 1),
    (b'{"entry_id":"\xe9","tier":null,"cap":1,"wishes":[1]}\n', 1),        # Latin-1, not UTF-8
    (b'\n', 1),
])
def test_entries_in_any_other_spelling_are_refused(data: bytes, line: int) -> None:
    with pytest.raises(DrawFileError, match=rf"^line {line}: "):
        read_entries(data)


@pytest.mark.parametrize("wish", [
    '{"course_id":1,"outcome":"waitlist"}', '{"course_id":1,"outcome":"won","position":1}',
    '{"course_id":1,"outcome":"waitlist","position":0}', '{"course_id":1,"outcome":"lost"}',
    '{"outcome":"won","course_id":1}',
])
def test_results_in_any_other_spelling_are_refused(wish: str) -> None:
    data = ('{"entry_id":"a","ticket":"' + "00" * 32 + '","results":[' + wish + ']}\n').encode()
    with pytest.raises(DrawFileError, match=r"^line 1: "):
        read_results(data)
    with pytest.raises(DrawFileError, match=r"^line 1: .*ticket"):
        read_results(data.replace(b"00", b"0A", 1))


def test_seed_and_tickets_are_the_published_formulas() -> None:
    entries_digest = hashlib.sha256(SMALL_ENTRIES).hexdigest()
    beacon = "07 19 23 31 42 + 05, drawn in public"
    seed = hashlib.sha256(f"booking-draw/v1|7|{entries_digest}|{beacon}".encode()).hexdigest()
    assert digest(SMALL_ENTRIES) == entries_digest
    assert seed_of(7, entries_digest, beacon) == seed_of("7", entries_digest, beacon) == seed
    assert commitment(beacon) == hashlib.sha256(beacon.encode()).hexdigest()
    ticket = hmac.new(bytes.fromhex(seed), "é-1".encode(), hashlib.sha256).hexdigest()
    assert ticket_of(seed, "é-1") == ticket
    drawn = draw(7, SMALL, {3: 1, 4: 1, 5: 1}, ["长者"], 2, beacon)
    assert (drawn.entries_digest, drawn.seed) == (entries_digest, seed)
    assert [r.ticket for r in drawn.results] == [ticket_of(seed, "z"), ticket]


def test_the_draw_is_deterministic_and_depends_on_the_beacon() -> None:
    entries = _entries(random.Random(3), 40, 5)
    once = draw(7, entries, {c: 3 for c in range(1, 6)}, ["senior"], 2, "beacon one, sealed")
    shuffled = random.Random(4).sample(entries, len(entries))
    assert draw("7", shuffled, {c: 3 for c in range(1, 6)}, ["senior"], 2,
                "beacon one, sealed") == once
    other = draw(7, entries, {c: 3 for c in range(1, 6)}, ["senior"], 2, "beacon two, sealed")
    assert other.seed != once.seed and other.results != once.results


# -- properties --------------------------------------------------------------------------------

COURSES = range(1, 7)


@st.composite
def releases(draw_: Any) -> dict[str, Any]:
    ids = draw_(st.lists(st.text("ab1é长", min_size=1, max_size=4), unique=True, max_size=25))
    entries = [Entry(entry_id, draw_(st.sampled_from([None, "senior", "member", "vip"])),
                     draw_(st.integers(0, 4)),
                     tuple(draw_(st.lists(st.sampled_from(COURSES), min_size=1, max_size=4,
                                          unique=True))))
               for entry_id in ids]
    seats = draw_(st.dictionaries(st.sampled_from(COURSES), st.integers(0, 4)))
    tiers = draw_(st.lists(st.sampled_from(["senior", "member"]), unique=True))
    return {"release_id": draw_(st.integers(1, 10**6)), "entries": entries, "seats": seats,
            "tiers": tiers, "rounds": draw_(st.integers(0, 5)), "beacon": draw_(st.text())}


@PROPERTIES
@given(releases())
def test_no_course_entry_or_round_is_exceeded(release: dict[str, Any]) -> None:
    drawn = draw(**release)
    entries = {entry.entry_id: entry for entry in release["entries"]}
    for course, winners in drawn.winners.items():
        assert len(winners) <= release["seats"].get(course, 0)
        assert len(set(winners)) == len(winners)
        assert all(course in entries[entry_id].wishes for entry_id in winners)
    assert [r.entry_id for r in drawn.results] == sorted(entries)
    for result in drawn.results:
        entry = entries[result.entry_id]
        won = [wish.course_id for wish in result.results if wish.outcome == "won"]
        assert [wish.course_id for wish in result.results] == list(entry.wishes)
        assert len(won) <= entry.cap and len(won) <= release["rounds"]
        assert all(result.entry_id in drawn.winners[course] for course in won)
        assert result.ticket == ticket_of(drawn.seed, entry.entry_id)


@PROPERTIES
@given(releases())
def test_waitlists_are_numbered_and_hold_only_entries_under_their_cap(
        release: dict[str, Any]) -> None:
    drawn = draw(**release)
    caps = {entry.entry_id: entry.cap for entry in release["entries"]}
    waiting: dict[int, dict[int, str]] = {}
    for result in drawn.results:
        won = sum(wish.outcome == "won" for wish in result.results)
        for wish in result.results:
            assert (wish.position is not None) == (wish.outcome == "waitlist")
            if wish.outcome == "waitlist":
                assert won < caps[result.entry_id]
                assert result.entry_id not in drawn.winners.get(wish.course_id, [])
                waiting.setdefault(wish.course_id, {})[wish.position] = result.entry_id
    for course, queue in drawn.waitlists.items():
        assert waiting.get(course, {}) == dict(enumerate(queue, start=1))
    assert set(waiting) <= set(drawn.waitlists)


@PROPERTIES
@given(releases())
def test_no_seat_is_left_that_someone_under_their_cap_wished_for(
        release: dict[str, Any]) -> None:
    release["rounds"] = max([entry.cap for entry in release["entries"]], default=0)
    drawn = draw(**release)
    left = {c: n - len(drawn.winners.get(c, [])) for c, n in release["seats"].items()}
    for result in drawn.results:
        won = sum(wish.outcome == "won" for wish in result.results)
        if won < next(e.cap for e in release["entries"] if e.entry_id == result.entry_id):
            assert all(left.get(wish.course_id, 0) == 0 for wish in result.results
                       if wish.outcome != "won")


@PROPERTIES
@given(releases())
def test_a_draw_is_deterministic_and_verifies_from_its_files(release: dict[str, Any]) -> None:
    drawn = draw(**release)
    assert draw(**{**release, "entries": release["entries"][::-1]}) == drawn
    record, entries, results = _published(release)
    assert read_entries(entries) == sorted(release["entries"], key=lambda e: e.entry_id)
    assert entries_file(read_entries(entries)) == entries
    assert results_file(read_results(results)) == results
    assert verify(record, entries, results).startswith(f"verified {ALGORITHM} release ")


# -- verify ------------------------------------------------------------------------------------

def _entries(rng: random.Random, count: int, courses: int) -> list[Entry]:
    return [Entry(f"r{n:03d}-{rng.randrange(10**6):06d}", rng.choice([None, "senior"]),
                  rng.randint(1, 2), tuple(rng.sample(range(1, courses + 1), 3)))
            for n in range(count)]


def _published(release: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes]:
    """What GET /v1/releases/{id}/draw and its two files serve for a release."""
    drawn = draw(**release)
    entries, results = entries_file(release["entries"]), results_file(drawn.results)
    record = {
        "release_id": release["release_id"], "algorithm": ALGORITHM,
        "rounds": release["rounds"], "tiers": release["tiers"],
        "courses": [{"course_id": c, "seats": n} for c, n in sorted(release["seats"].items())],
        "entries_count": len(release["entries"]), "entries_digest": digest(entries),
        "beacon_commitment": commitment(release["beacon"]), "beacon": release["beacon"],
        "seed": drawn.seed, "results_digest": digest(results),
        "entries_url": "/v1/releases/7/entries.jsonl",
        "results_url": "/v1/releases/7/results.jsonl", "drawn_at": "2026-09-01T08:00:00Z"}
    return record, entries, results


@pytest.fixture(scope="module")
def published() -> tuple[dict[str, Any], bytes, bytes]:
    return _published({"release_id": 7, "entries": _entries(random.Random(11), 30, 4),
                       "seats": {1: 2, 2: 3, 3: 4, 4: 25}, "tiers": ["senior"], "rounds": 2,
                       "beacon": "12 17 28 33 41 + 09, drawn 2026-08-20"})


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def test_verify_passes_on_a_drawn_release(published) -> None:
    record, entries, results = published
    line = verify(record, entries, results)
    assert line.startswith("verified booking-draw/v1 release 7: 30 entries, 4 courses, 2 rounds")
    assert record["seed"][:12] in line and record["results_digest"][:12] in line


def test_any_changed_byte_of_either_file_fails(published) -> None:
    record, entries, results = published
    for at in range(len(entries)):
        with pytest.raises(DrawMismatch, match=r"^the entries file's SHA-256 is "):
            verify(record, _flipped(entries, at), results)
    for at in range(len(results)):
        with pytest.raises(DrawMismatch):
            verify(record, entries, _flipped(results, at))


def test_a_changed_result_is_named_by_its_entry(published) -> None:
    record, entries, results = published
    lines = results.split(b"\n")
    first = json.loads(lines[0])
    who = first["entry_id"]
    ticket_changed = _flipped(results, results.index(first["ticket"].encode()) + 5)
    with pytest.raises(DrawMismatch, match=rf"^entry {who}: its ticket should be "):
        verify(record, entries, ticket_changed)
    outcome = first["results"][0]["outcome"]
    first["results"][0] = {"course_id": first["results"][0]["course_id"],
                           "outcome": "none" if outcome == "won" else "won"}
    forged = b"\n".join([json.dumps(first, separators=(",", ":")).encode(), *lines[1:]])
    # Even with the record's results digest forged to match, the re-run tells them apart.
    with pytest.raises(DrawMismatch, match=rf"^entry {who}: the results file says .* the re-run"):
        verify({**record, "results_digest": digest(forged)}, entries, forged)
    with pytest.raises(DrawMismatch, match="lacks entry"):
        verify(record, entries, b"\n".join(lines[:-2]) + b"\n")
    with pytest.raises(DrawMismatch, match=r"^the results file, line 1: "):
        verify(record, entries, b" " + results)


@pytest.mark.parametrize(("change", "problem"), [
    ({"algorithm": "booking-draw/v2"}, "^the draw uses algorithm 'booking-draw/v2'"),
    ({"entries_count": 31}, "^the entries file has 30 entries, but the draw record says 31"),
    ({"beacon": "12 17 28 33 41 + 08, drawn 2026-08-20"}, "^the beacon's SHA-256 is .* not the "
                                                          "commitment"),
    ({"seed": "0" * 64}, "^the seed should be [0-9a-f]{64}, but the draw record says 0{64}"),
    ({"release_id": 8}, "^the seed should be "),
    ({"results_digest": "0" * 64}, "^the results file's SHA-256 is "),
    ({"rounds": 1}, "^entry .*: the results file says .* the re-run draw gives "),
    ({"tiers": []}, "the re-run draw"),
])
def test_verify_names_what_does_not_match(published, change: dict[str, Any],
                                          problem: str) -> None:
    record, entries, results = published
    with pytest.raises(DrawMismatch, match=problem):
        verify({**record, **change}, entries, results)


def test_a_record_that_is_no_draw_record_is_refused(published) -> None:
    record, entries, results = published
    with pytest.raises(DrawFileError, match="seed"):
        verify({k: v for k, v in record.items() if k != "seed"}, entries, results)
    with pytest.raises(DrawFileError, match="courses"):
        verify({**record, "courses": [{"course_id": 1}]}, entries, results)


# -- booking verify-draw -----------------------------------------------------------------------

@pytest.fixture
def files(published, tmp_path: Path) -> list[Path]:
    record, entries, results = published
    paths = [tmp_path / "draw.json", tmp_path / "entries.jsonl", tmp_path / "results.jsonl"]
    for path, data in zip(paths, [json.dumps(record).encode(), entries, results], strict=True):
        path.write_bytes(data)
    return paths


def test_the_command_verifies_published_files(files: list[Path]) -> None:
    done = run_cli(dict(os.environ), "verify-draw", *map(str, files))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("verified booking-draw/v1 release 7: 30 entries")
    assert done.stdout.count("\n") == 1 and done.stderr == ""


@pytest.mark.parametrize("which", [1, 2])
def test_the_command_fails_when_one_byte_changed(files: list[Path], which: int) -> None:
    data = files[which].read_bytes()
    files[which].write_bytes(_flipped(data, len(data) // 2))
    done = run_cli(dict(os.environ), "verify-draw", *map(str, files))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("not verified: ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_the_command_says_what_it_cannot_read(files: list[Path], tmp_path: Path) -> None:
    missing = run_cli(dict(os.environ), "verify-draw", str(files[0]), str(tmp_path / "nope"),
                      str(files[2]))
    files[0].write_text("<html>not json</html>")
    not_json = run_cli(dict(os.environ), "verify-draw", *map(str, files))
    unreachable = run_cli(dict(os.environ), "verify-draw", "--url", "http://127.0.0.1:9",
                          "--release", "7")
    for done, says in [(missing, "cannot read"), (not_json, "is not a JSON draw record"),
                       (unreachable, "cannot reach http://127.0.0.1:9/v1/releases/7/draw")]:
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("booking verify-draw: ") and says in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
