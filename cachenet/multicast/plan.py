"""Planning one batch of concurrent pulls: which blocks go by multicast, to which group, which by unicast.

A block wanted by two or more members of a group is sent once to the group's multicast
address; everything else goes to each member by unicast. A group sends no faster than
its slowest member can take, so one slow device would hold every other member back: the
planner may split the members, sorted by the rate they declared, into rate classes (each
its own group) or leave a slow device out of every group (it then gets its blocks by
unicast). It picks the split with the lowest estimated mean completion time, then the
fewest bytes sent.

The estimate is a fluid model of the node's link shared by processor sharing: every
unicast transfer and every group's stream is a flow; a flow of s bytes ends after
sum(min(s_f, s) for every flow f) / egress_rate, and no sooner than its own rate allows.
A member completes when its group's stream and its unicast flow have both ended and its
own link has carried every byte it wants.
"""

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cachenet.errors import BadInput

__all__ = ("DeliveryPlan", "GroupPlan", "MemberDemand", "plan_delivery")

OBJECTIVE: Final = "mean completion time (processor-sharing fluid estimate), then egress bytes"
# Up to this many distinct member rates every split into rate classes is tried; beyond, a greedy search.
EXACT_MAX_CLASSES: Final = 10


@dataclass(frozen=True, slots=True)
class MemberDemand:
    """One requester: the blocks it lacks and the rate (bytes/s) its link takes (None: any rate)."""

    member: str
    blocks: tuple[str, ...]
    rate: float | None = None


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A multicast group: its members, the blocks it sends (in order) and its rate."""

    members: tuple[str, ...]
    blocks: tuple[str, ...]
    rate: float
    bytes: int


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """The plan of a batch and what it is expected to cost."""

    groups: tuple[GroupPlan, ...]
    unicast: Mapping[str, tuple[str, ...]]
    left_out: tuple[str, ...]
    completion_s: Mapping[str, float]
    egress_bytes: int
    unicast_only_completion_s: Mapping[str, float]
    unicast_only_bytes: int
    ideal_bytes: int
    method: str
    _group_of: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def mean_completion_s(self) -> float:
        """The objective: the estimated mean completion time."""
        return _mean(self.completion_s.values())

    @property
    def last_completion_s(self) -> float:
        """The estimated time to the last completion."""
        return max(self.completion_s.values(), default=0.0)

    def group_of(self, member: str) -> int | None:
        """Index of the member's group, None when it gets everything by unicast."""
        return self._group_of.get(member)

    def to_json(self) -> dict[str, Any]:
        """The plan, its objective and its estimates."""
        return {
            "objective": OBJECTIVE,
            "method": self.method,
            "groups": [
                {"members": list(g.members), "blocks": len(g.blocks), "bytes": g.bytes, "rate": g.rate}
                for g in self.groups
            ],
            "left_out": list(self.left_out),
            "estimate": {
                "mean_completion_s": round(self.mean_completion_s, 4),
                "last_completion_s": round(self.last_completion_s, 4),
                "egress_bytes": self.egress_bytes,
            },
            "unicast_only": {
                "mean_completion_s": round(_mean(self.unicast_only_completion_s.values()), 4),
                "last_completion_s": round(max(self.unicast_only_completion_s.values(), default=0.0), 4),
                "egress_bytes": self.unicast_only_bytes,
            },
            "ideal_bytes": self.ideal_bytes,
        }


@dataclass(frozen=True, slots=True)
class _Class:
    """Members [lo, hi) of the rate-sorted list, planned as one group."""

    group: GroupPlan | None
    unicast: dict[str, tuple[str, ...]]


def plan_delivery(
    demands: Sequence[MemberDemand],
    sizes: Mapping[str, int],
    *,
    egress_rate: float,
    multicast_rate: float | None = None,
) -> DeliveryPlan:
    """Plan one batch. `sizes` maps every wanted block to its size; rates are bytes/s."""
    if egress_rate <= 0 or (multicast_rate is not None and multicast_rate <= 0):
        raise BadInput("rates must be positive")
    if len({d.member for d in demands}) != len(demands):
        raise BadInput("member ids must be unique")
    for d in demands:
        if d.rate is not None and d.rate <= 0:
            raise BadInput(f"member {d.member}: rate must be positive")
        for b in d.blocks:
            if b not in sizes:
                raise BadInput(f"member {d.member}: block {b} has no known size")
    cap = min(egress_rate, multicast_rate or math.inf)
    ordered = sorted(demands, key=lambda d: -(d.rate or math.inf))
    # Members with the same rate always share a class: splitting them only adds bytes.
    units = [list(g) for _, g in itertools.groupby(ordered, key=lambda d: d.rate or math.inf)]
    planner = _Planner(units, sizes, egress_rate=egress_rate, cap=cap)
    if len(units) <= EXACT_MAX_CLASSES:
        best, method = planner.exact(), "exact"
    else:
        best, method = planner.greedy(), "greedy"
    classes = [planner.plan_class(lo, hi) for lo, hi in best]
    groups = tuple(c.group for c in classes if c.group is not None)
    unicast = {m: blocks for c in classes for m, blocks in c.unicast.items()}
    group_of = {m: i for i, g in enumerate(groups) for m in g.members}
    wanted = {d.member: d.blocks for d in demands}
    shared = {b for b, n in Counter(b for d in demands for b in set(d.blocks)).items() if n >= 2}
    left_out = tuple(sorted(m for m in wanted if m not in group_of and shared & set(wanted[m])))
    completion = planner.completion(classes)
    solo = planner.completion([_Class(None, {d.member: d.blocks for d in demands})])
    return DeliveryPlan(
        groups=groups,
        unicast=unicast,
        left_out=left_out,
        completion_s=completion,
        egress_bytes=_egress(classes, sizes),
        unicast_only_completion_s=solo,
        unicast_only_bytes=sum(sizes[b] for d in demands for b in set(d.blocks)),
        ideal_bytes=sum(sizes[b] for b in {b for d in demands for b in d.blocks}),
        method=method,
        _group_of=group_of,
    )


class _Planner:
    def __init__(
        self, units: list[list[MemberDemand]], sizes: Mapping[str, int], *, egress_rate: float, cap: float
    ) -> None:
        self.units, self.sizes, self.egress_rate, self.cap = units, sizes, egress_rate, cap
        self.rate = {d.member: d.rate or math.inf for u in units for d in u}
        self.wanted = {d.member: tuple(dict.fromkeys(d.blocks)) for u in units for d in u}
        self._classes: dict[tuple[int, int], _Class] = {}

    def exact(self) -> list[tuple[int, int]]:
        n = len(self.units)
        candidates = (_bounds(cuts, n) for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        return min(candidates, key=self.score)

    def greedy(self) -> list[tuple[int, int]]:
        best = [(0, len(self.units))]
        best_score = self.score(best)
        while True:
            neighbours = []
            cuts = [hi for _, hi in best[:-1]]
            for c in range(1, len(self.units)):
                neighbours.append(sorted(set(cuts) ^ {c}))  # add a cut, or remove one
            scored = [(self.score(b), b) for b in (_bounds(c, len(self.units)) for c in neighbours)]
            score, bounds = min(scored, key=lambda x: x[0])
            if score >= best_score:
                return best
            best, best_score = bounds, score

    def score(self, bounds: list[tuple[int, int]]) -> tuple[float, int]:
        classes = [self.plan_class(lo, hi) for lo, hi in bounds]
        return _mean(self.completion(classes).values()), _egress(classes, self.sizes)

    def plan_class(self, lo: int, hi: int) -> _Class:
        cached = self._classes.get((lo, hi))
        if cached is not None:
            return cached
        members = [d.member for u in self.units[lo:hi] for d in u]
        counts = Counter(b for m in members for b in self.wanted[m])
        shared = {b for b, n in counts.items() if n >= 2}
        group = None
        if shared:
            in_group = tuple(m for m in members if shared.intersection(self.wanted[m]))
            order = tuple(sorted(shared, key=lambda b: (-counts[b], -self.sizes[b], b)))
            rate = min(self.cap, min(self.rate[m] for m in in_group))
            group = GroupPlan(in_group, order, rate, sum(self.sizes[b] for b in order))
        unicast = {m: tuple(b for b in self.wanted[m] if b not in shared) for m in members}
        result = self._classes[(lo, hi)] = _Class(group, unicast)
        return result

    def completion(self, classes: Sequence[_Class]) -> dict[str, float]:
        flows = sorted(
            [c.group.bytes for c in classes if c.group is not None]
            + [sum(self.sizes[b] for b in blocks) for c in classes for blocks in c.unicast.values()]
        )
        prefix = [0, *itertools.accumulate(flows)]

        def ends(size: int) -> float:
            # Processor sharing: when a flow of `size` bytes ends, every flow has sent min(its size, size).
            k = bisect.bisect_right(flows, size)
            return (prefix[k] + size * (len(flows) - k)) / self.egress_rate

        out: dict[str, float] = {}
        for c in classes:
            group_end = 0.0
            if c.group is not None:
                group_end = max(ends(c.group.bytes), c.group.bytes / c.group.rate)
            members = set(c.group.members) if c.group is not None else set()
            for m, blocks in c.unicast.items():
                own = sum(self.sizes[b] for b in blocks)
                # A group member's link carries the whole group stream, wanted or not, besides its own.
                carried = own + (c.group.bytes if c.group is not None and m in members else 0)
                out[m] = max(group_end if m in members else 0.0, ends(own) if own else 0.0, carried / self.rate[m])
        return out


def _bounds(cuts: Iterable[int], n: int) -> list[tuple[int, int]]:
    edges = [0, *cuts, n]
    return list(itertools.pairwise(edges))


def _egress(classes: Sequence[_Class], sizes: Mapping[str, int]) -> int:
    return sum(c.group.bytes for c in classes if c.group is not None) + sum(
        sizes[b] for c in classes for blocks in c.unicast.values() for b in blocks
    )


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0
