"""What the crowd needs to know about a run, written by `python -m loadtest.fairness run` and read
by every Locust process: the release, its times, the course ids by popularity, and the timings of
each group.

Timings are the issue's, at `scale` 1 (a 120 s window, a 5-minute lottery, a 120 s first-come
rush); a shorter run multiplies the residents' starts and waits by the same factor, so that the
slow still reach a 5 s window. Bots are machines: their lead and polling interval do not scale.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Timings:
    normal_start: Range = (0.0, 10.0)  # after opens_at
    normal_wait: Range = (0.2, 1.5)  # before each request
    slow_start: Range = (5.0, 60.0)
    slow_wait: Range = (3.0, 8.0)  # before each request and after each answer
    bot_lead_s: float = 5.0  # bots poll from opens_at - this (each within its first interval)
    bot_every_s: float = 0.2

    def scaled(self, scale: float) -> Timings:
        def times(pair: Range) -> Range:
            return (pair[0] * scale, pair[1] * scale)

        return replace(self, normal_start=times(self.normal_start),
                       normal_wait=times(self.normal_wait), slow_start=times(self.slow_start),
                       slow_wait=times(self.slow_wait))

    def start_after_opening(self, group: str, rng: random.Random) -> float:
        """When a resident of `group` starts, in seconds after opens_at (bots: before it)."""
        if group == "bot":  # bots are many machines: each polls at a phase of its own
            return -self.bot_lead_s + rng.uniform(0.0, self.bot_every_s)
        return rng.uniform(*(self.slow_start if group == "slow" else self.normal_start))

    def longest_s(self, requests: int) -> float:
        """How long after opens_at the slowest resident can still be sending (no retries)."""
        return max(self.normal_start[1] + requests * self.normal_wait[1],
                   self.slow_start[1] + 2 * requests * self.slow_wait[1])


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str  # fcfs | window | lottery
    base_url: str
    release_id: int
    course_ids: list[int]  # by popularity rank: the hottest first
    opens_at_epoch: float
    ends_at_epoch: float  # residents stop trying then (draw modes: entries close)
    term_cap: int | None
    population: str  # the population file
    out: str  # where each Locust process writes tried-<pid>.jsonl
    timings: Timings = field(default_factory=Timings)

    @property
    def is_draw(self) -> bool:
        return self.mode in ("window", "lottery")

    def wishes_of(self, ranks: tuple[int, ...]) -> list[int]:
        return [self.course_ids[rank] for rank in ranks]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path


def read_plan(path: Path) -> Plan:
    body = json.loads(path.read_text())
    timings = body.pop("timings", {})
    return Plan(**body, timings=Timings(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in timings.items()}))
