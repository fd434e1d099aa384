"""TrimCaching followed by the local-search improvement phase (`local_search.improve`).

The paper's algorithms (`trimcaching-gen`, `trimcaching-gen-density`, `trimcaching-spec`) stay
as published; these run one of them, then improve its answer within a time budget:

- `trimcaching-gen-ls`, `trimcaching-gen-density-ls`, `trimcaching-spec-ls`: one greedy + local search;
- `trimcaching-ls` (the controller's default): both general-case greedy rules, each followed
  by local search, the better kept, so it is never below either greedy.
"""

import time

from placement.problem import Placement, PlacementProblem, make_placement
from placement.solvers.local_search import DEFAULT_TIME_BUDGET_S, improve
from placement.solvers.trimcaching_gen import Method, greedy_placement
from placement.solvers.trimcaching_spec import DEFAULT_EPSILON, DEFAULT_MAX_SHARED, trimcaching_spec

__all__ = ("trimcaching_gen_ls", "trimcaching_ls", "trimcaching_spec_ls")


def trimcaching_gen_ls(
    problem: PlacementProblem, *, method: Method = "gain", time_budget_s: float = DEFAULT_TIME_BUDGET_S
) -> Placement:
    """General-case TrimCaching greedy, then local search."""
    start = time.perf_counter()
    chosen, info = greedy_placement(problem, method=method, charge="shared")
    greedy_hit = make_placement(problem, chosen, solver="", runtime_s=0.0).hit_ratio
    chosen, ls = improve(problem, chosen, time_budget_s=time_budget_s)
    name = "trimcaching-gen-ls" if method == "gain" else "trimcaching-gen-density-ls"
    return make_placement(
        problem, chosen, solver=name, runtime_s=time.perf_counter() - start,
        info={**info, **ls, "greedy_hit_ratio": greedy_hit},
    )  # fmt: skip


def trimcaching_spec_ls(
    problem: PlacementProblem,
    *,
    epsilon: float = DEFAULT_EPSILON,
    max_shared: int = DEFAULT_MAX_SHARED,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> Placement:
    """Special-case TrimCaching (successive greedy + knapsack), then local search."""
    start = time.perf_counter()
    first = trimcaching_spec(problem, epsilon=epsilon, max_shared=max_shared)
    chosen, ls = improve(problem, _indices(problem, first), time_budget_s=time_budget_s)
    return make_placement(
        problem, chosen, solver="trimcaching-spec-ls", runtime_s=time.perf_counter() - start,
        info={**first.info, **ls, "greedy_hit_ratio": first.hit_ratio},
    )  # fmt: skip


def trimcaching_ls(problem: PlacementProblem, *, time_budget_s: float = DEFAULT_TIME_BUDGET_S) -> Placement:
    """The default: both general-case greedy rules, each improved by local search (half the
    budget each), the better result kept; never below either greedy."""
    start = time.perf_counter()
    best: tuple[float, list[set[int]], dict[str, float | int | str]] | None = None
    methods: tuple[Method, Method] = ("gain", "density")
    for k, method in enumerate(methods):
        chosen, info = greedy_placement(problem, method=method, charge="shared")
        greedy_hit = make_placement(problem, chosen, solver="", runtime_s=0.0).hit_ratio
        left = max(0.0, time_budget_s - (time.perf_counter() - start)) / (2 - k)
        chosen, ls = improve(problem, chosen, time_budget_s=left)
        hit = make_placement(problem, chosen, solver="", runtime_s=0.0).hit_ratio
        if best is None or hit > best[0]:
            best = (hit, chosen, {**info, **ls, "greedy_hit_ratio": greedy_hit})
    assert best is not None
    return make_placement(
        problem, best[1], solver="trimcaching-ls", runtime_s=time.perf_counter() - start, info=best[2]
    )


def _indices(problem: PlacementProblem, placement: Placement) -> list[set[int]]:
    index = {m: i for i, m in enumerate(problem.models)}
    return [{index[m] for m in placement.models.get(s, ())} for s in problem.servers]
