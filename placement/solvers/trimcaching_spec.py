"""TrimCaching for the special case of few shared blocks: successive greedy + knapsack DP.

Objective: maximise the hit ratio with shared blocks stored once per server. Algorithm
(Qu et al., "TrimCaching", 2024, special case): decide servers one after another; for
server n, given the requests already covered by servers decided before, try every subset S
of the S_tot shared block groups that fits Q_n; a model is placeable under S only if all its
shared groups are in S; choose its model-specific blocks by a 0/1 knapsack on the remaining
capacity, solved by dynamic programming over rounded profits (an FPTAS with parameter eps),
with values = marginal hit-weight gains. Keep the best subset's models.

Guarantee: each server's choice is a (1 - eps)-approximation of its best single-server
placement; successive greedy over servers (a partition matroid over a submodular coverage
objective) then gives (1 - eps) / (2 - eps) >= (1 - eps) / 2 of the optimum.
Complexity: O(N * 2^S_tot * m^3 / eps) for m placeable models per subset.
"""

import time
from typing import Final

import numpy as np

from placement.errors import SolverRefused
from placement.problem import Placement, PlacementProblem, make_placement
from placement.solvers.gains import GainTable

__all__ = ("DEFAULT_EPSILON", "DEFAULT_MAX_SHARED", "knapsack_fptas", "trimcaching_spec")

DEFAULT_EPSILON: Final = 0.1
DEFAULT_MAX_SHARED: Final = 16  # 2^16 subsets per server
_TINY_REL: Final = 1e-12
_MAX_DP_CELLS: Final = 400_000_000


def trimcaching_spec(
    problem: PlacementProblem,
    *,
    epsilon: float = DEFAULT_EPSILON,
    max_shared: int = DEFAULT_MAX_SHARED,
) -> Placement:
    """Special-case TrimCaching: (1 - eps)/2-approximation when few block groups are shared.

    Raises:
        SolverRefused: eps outside (0, 1), or more shared block groups than `max_shared`.
    """
    if not 0.0 < epsilon < 1.0:
        raise SolverRefused(f"epsilon must be in (0, 1), got {epsilon!r}")
    start = time.perf_counter()
    shared = problem.shared_blocks()
    if len(shared) > max_shared:
        raise SolverRefused(
            f"{len(shared)} shared block groups need 2^{len(shared)} subsets per server, over the "
            f"limit 2^{max_shared}; use trimcaching-gen or raise max_shared",
            shared_blocks=len(shared),
        )
    bit_of = {g: b for b, g in enumerate(shared)}
    shared_sizes = problem.block_sizes[list(shared)] if shared else np.zeros(0, dtype=np.int64)
    need = np.zeros(len(problem.models), dtype=np.int64)  # bitmask of shared groups per model
    specific = np.zeros(len(problem.models), dtype=np.int64)  # bytes of model-specific groups
    for i, blocks in enumerate(problem.model_blocks):
        for g in blocks:
            if g in bit_of:
                need[i] |= 1 << bit_of[g]
            else:
                specific[i] += int(problem.block_sizes[g])
    subset_cost = np.zeros(1 << len(shared), dtype=np.int64)
    for mask in range(1, 1 << len(shared)):
        low = mask & -mask
        subset_cost[mask] = subset_cost[mask ^ low] + shared_sizes[low.bit_length() - 1]
    table = GainTable(problem)
    tiny = _TINY_REL * max(problem.total_weight, 1e-300)
    chosen: list[set[int]] = [set() for _ in problem.servers]
    for n, capacity in enumerate(problem.capacities):
        gains = table.gain[n]
        useful = gains > tiny
        best_value, best_models = 0.0, np.zeros(0, dtype=np.int64)
        for mask in range(1 << len(shared)):
            left = capacity - int(subset_cost[mask])
            if left < 0:
                continue
            candidates = np.flatnonzero(useful & ((need & ~mask) == 0) & (specific <= left))
            if len(candidates) == 0:
                continue
            picked, value = knapsack_fptas(gains[candidates], specific[candidates], left, epsilon=epsilon)
            if value > best_value + tiny:
                best_value, best_models = value, candidates[picked]
        for i in best_models.tolist():
            chosen[n].add(i)
            table.place(n, i)
    return make_placement(
        problem,
        chosen,
        solver="trimcaching-spec",
        runtime_s=time.perf_counter() - start,
        info={"epsilon": epsilon, "shared_block_groups": len(shared)},
    )


def knapsack_fptas(
    values: np.ndarray, weights: np.ndarray, capacity: int, *, epsilon: float
) -> tuple[np.ndarray, float]:
    """0/1 knapsack by DP over profits rounded down to multiples of eps * vmax / m.

    Returns the chosen item positions and their (unrounded) total value, which is at least
    (1 - eps) of the optimum (Ibarra and Kim, 1975). O(m^3 / eps) time, O(m^2 / eps) memory.
    """
    values = np.asarray(values, dtype=float)
    weights = np.asarray(weights, dtype=np.int64)
    free = np.flatnonzero((weights == 0) & (values > 0))
    items = np.flatnonzero((weights > 0) & (weights <= capacity) & (values > 0))
    if len(items) == 0:
        return free, float(values[free].sum())
    scale = epsilon * float(values[items].max()) / len(items)
    profits = np.floor(values[items] / scale).astype(np.int64)
    total = int(profits.sum())
    if len(items) * (total + 1) > _MAX_DP_CELLS:
        raise SolverRefused(
            f"knapsack DP over {len(items)} items needs {len(items) * (total + 1)} cells; "
            "raise epsilon or use trimcaching-gen"
        )
    inf = np.iinfo(np.int64).max // 4
    best = np.full(total + 1, inf, dtype=np.int64)
    best[0] = 0
    take = np.zeros((len(items), total + 1), dtype=bool)
    reach = 0
    for pos, (p, w) in enumerate(zip(profits.tolist(), weights[items].tolist(), strict=True)):
        if p == 0:
            continue  # rounded to nothing; the FPTAS bound already accounts for it
        hi = reach + p
        cand = best[: reach + 1] + w
        better = cand < best[p : hi + 1]
        best[p : hi + 1] = np.where(better, cand, best[p : hi + 1])
        take[pos, p : hi + 1] = better
        reach = hi
    feasible = np.flatnonzero(best <= capacity)
    profit = int(feasible.max())
    picked = []
    for pos in range(len(items) - 1, -1, -1):
        if profit > 0 and take[pos, profit]:
            picked.append(items[pos])
            profit -= int(profits[pos])
    sel = np.concatenate([free, np.array(sorted(picked), dtype=np.int64)])
    return sel, float(values[sel].sum())
