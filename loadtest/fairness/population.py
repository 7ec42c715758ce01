"""The population of a fairness run: who is slow, who is a bot, and what everyone wishes for.

Groups are assigned by a fixed seed, in exact proportions (20 % slow, 5 % bots, the rest
normal), so every mode of a run meets the same residents. Everyone ranks the same number of
wishes from one Zipf-like popularity over the courses: course k (0 = hottest) is wished for
with a weight 1 / (k + 1 + offset), offset = courses x 3 / 32, which makes the hottest tenth of
160 courses x 25 seats 15-30x oversubscribed by 10,000 residents with 3 wishes each. Wishes are
course ranks here; the run maps them onto the course ids its release published, hottest first.

The file is JSON: the seed, the shares and one row per resident. The service never reads it;
the crowd and the checker do.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

GROUPS = ("normal", "slow", "bot")
SHARES = {"normal": 0.75, "slow": 0.20, "bot": 0.05}
DEFAULT_SEED = 13
PREFIX = "fair-"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    group: str
    wishes: tuple[int, ...]  # course ranks, 0 = hottest, best first


@dataclass(frozen=True, slots=True)
class Population:
    seed: int
    courses: int
    shares: dict[str, float]
    members: tuple[Member, ...] = field(repr=False)

    def sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(GROUPS, 0)
        for member in self.members:
            sizes[member.group] += 1
        return sizes

    def group_of(self) -> dict[str, str]:
        return {member.id: member.group for member in self.members}

    def demand(self) -> list[int]:
        """Wishes per course rank, any position."""
        counts = [0] * self.courses
        for member in self.members:
            for rank in member.wishes:
                counts[rank] += 1
        return counts


def popularity(courses: int) -> list[float]:
    """Zipf-like weights by course rank (see the module)."""
    offset = courses * 3 / 32
    return [1.0 / (k + 1 + offset) for k in range(courses)]


def group_sizes(residents: int, shares: dict[str, float]) -> dict[str, int]:
    """Exact counts per group; normal takes what rounding leaves."""
    sizes = {group: round(residents * shares[group]) for group in GROUPS if group != "normal"}
    sizes["normal"] = residents - sum(sizes.values())
    if sizes["normal"] < 0:
        raise ValueError("the group shares add up to more than 1")
    return sizes


def make(residents: int, courses: int, *, wishes: int = 3, seed: int = DEFAULT_SEED,
         shares: dict[str, float] | None = None, prefix: str = PREFIX) -> Population:
    """`residents` members, groups shuffled by `seed`, each with `wishes` distinct ranks."""
    if residents < 1 or courses < wishes or wishes < 1:
        raise ValueError("need at least one resident and at least as many courses as wishes")
    shares = shares or SHARES
    rng = random.Random(seed)
    labels = [group for group, n in group_sizes(residents, shares).items() for _ in range(n)]
    rng.shuffle(labels)
    weights = popularity(courses)
    members = []
    for n, group in enumerate(labels):
        left = list(range(courses))
        chosen = []
        for _ in range(wishes):  # weighted, without replacement
            pick = rng.choices(range(len(left)), weights=[weights[k] for k in left])[0]
            chosen.append(left.pop(pick))
        members.append(Member(f"{prefix}{n}", group, tuple(chosen)))
    return Population(seed, courses, dict(shares), tuple(members))


def write(population: Population, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"seed": population.seed, "courses": population.courses,
            "shares": population.shares, "groups": population.sizes(),
            "residents": [asdict(member) for member in population.members]}
    path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    return path


def read(path: Path) -> Population:
    """A population file `write` made; ValueError names what is wrong with it."""
    try:
        body = json.loads(path.read_text())
        members = tuple(Member(str(row["id"]), str(row["group"]),
                               tuple(int(rank) for rank in row["wishes"]))
                        for row in body["residents"])
        population = Population(int(body["seed"]), int(body["courses"]),
                                {str(k): float(v) for k, v in body["shares"].items()}, members)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the population {path}: {exc}") from exc
    unknown = {member.group for member in members} - set(GROUPS)
    if unknown or not members:
        raise ValueError(f"the population {path} has no residents or unknown groups {unknown}")
    return population
