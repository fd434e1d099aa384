"""TrimCaching, general case: greedy over (server, model) pairs with shared blocks stored once.

Objective: maximise the hit ratio subject to, per server, the union of the placed models'
blocks fitting the capacity. Heuristic (Qu et al., "TrimCaching", 2024, general-case greedy):
repeatedly add the pair with the best marginal gain that still fits, where the marginal cost
of (n, i) counts only the blocks of i not yet on n.

- `method="gain"`: pick the largest marginal gain.
- `method="density"`: pick the largest gain per marginal byte, then compare with the best
  single pair (the classical safeguard for budgeted greedy) and keep the better placement.

Laziness: a priority queue holds a score per pair that is an upper bound of its true score;
a popped pair is re-scored and pushed back unless it is still the best. Gains only shrink
(coverage is submodular), so stale gain keys stay upper bounds. Marginal *costs* shrink too
when a model's shared block arrives on n, which raises densities and lets a pair that did
not fit fit again: on every block arrival the pairs (n, i') using that block are re-scored
and re-pushed with a new version, so the upper-bound invariant holds for both rules.
Complexity: O(P log P) heap work for P = servers x models pairs, plus O(eligible pairs) for
gain updates, plus one re-push per (server, model, arriving block group).
"""

import heapq
import math
import time
from typing import Literal

import numpy as np

from placement.errors import SolverRefused
from placement.problem import Placement, PlacementProblem, make_placement
from placement.solvers.gains import GainTable

__all__ = ("greedy_placement", "trimcaching_gen")

Method = Literal["gain", "density"]
_TINY_REL = 1e-12


def trimcaching_gen(problem: PlacementProblem, *, method: Method = "gain") -> Placement:
    """General-case TrimCaching greedy; shared blocks on a server are charged once."""
    start = time.perf_counter()
    chosen, info = greedy_placement(problem, method=method, charge="shared")
    name = "trimcaching-gen" if method == "gain" else "trimcaching-gen-density"
    return make_placement(problem, chosen, solver=name, runtime_s=time.perf_counter() - start, info=info)


def greedy_placement(
    problem: PlacementProblem,
    *,
    method: Method = "gain",
    charge: Literal["shared", "full"] = "shared",
) -> tuple[list[set[int]], dict[str, float | int | str]]:
    """Model indices per server chosen by the lazy greedy; `charge="full"` ignores sharing.

    Raises:
        SolverRefused: an unknown `method` or `charge`.
    """
    if method not in ("gain", "density"):
        raise SolverRefused(f"unknown greedy method {method!r}; use 'gain' or 'density'")
    if charge not in ("shared", "full"):
        raise SolverRefused(f"unknown charge {charge!r}; use 'shared' or 'full'")
    chosen, covered, pops = _greedy(problem, method=method, full=charge == "full")
    info: dict[str, float | int | str] = {"method": method, "charge": charge, "heap_pops": pops}
    if method == "density":
        single = _best_single(problem)
        if single is not None and single[0] > covered:
            n, i = single[1], single[2]
            chosen = [set() for _ in problem.servers]
            chosen[n].add(i)
            info["safeguard"] = "best-single"
    return chosen, info


def _greedy(problem: PlacementProblem, *, method: Method, full: bool) -> tuple[list[set[int]], float, int]:
    n_servers, n_models = len(problem.servers), len(problem.models)
    table = GainTable(problem)
    tiny = _TINY_REL * max(problem.total_weight, 1e-300)
    block_sizes = problem.block_sizes
    model_sizes = problem.model_sizes
    blocks_of = [np.array(b, dtype=np.int64) for b in problem.model_blocks]
    models_of: list[list[int]] = [[] for _ in range(len(block_sizes))]
    for i, blocks in enumerate(problem.model_blocks):
        for block in blocks:
            models_of[block].append(i)
    remaining = np.array(problem.capacities, dtype=np.int64)
    has = np.zeros((n_servers, len(block_sizes)), dtype=bool)
    placed = np.zeros((n_servers, n_models), dtype=bool)
    version = np.zeros((n_servers, n_models), dtype=np.int64)
    parked: list[set[int]] = [set() for _ in range(n_servers)]
    chosen: list[set[int]] = [set() for _ in range(n_servers)]
    density = method == "density"

    def cost(n: int, i: int) -> int:
        if full:
            return int(model_sizes[i])
        b = blocks_of[i]
        return int(block_sizes[b[~has[n, b]]].sum())

    def score(g: float, c: int) -> float:
        if not density:
            return g
        return math.inf if c == 0 else g / c

    gains = table.gain
    ns, is_ = np.nonzero((gains > tiny) & (model_sizes[None, :] <= remaining[:, None]))
    if density:
        init = gains[ns, is_] / np.maximum(model_sizes[is_], 1)
        init[model_sizes[is_] == 0] = math.inf
    else:
        init = gains[ns, is_]
    heap = list(zip((-init).tolist(), ns.tolist(), is_.tolist(), [0] * len(ns), strict=True))
    heapq.heapify(heap)
    pops = 0
    while heap:
        neg, n, i, ver = heapq.heappop(heap)
        pops += 1
        if placed[n, i] or ver != version[n, i]:
            continue
        g = float(gains[n, i])
        if g <= tiny:
            continue  # gains never grow back
        c = cost(n, i)
        if c > remaining[n]:
            parked[n].add(i)
            continue
        s = score(g, c)
        if s < -neg - 1e-12 * abs(neg):
            heapq.heappush(heap, (-s, n, i, ver))
            continue
        placed[n, i] = True
        chosen[n].add(i)
        remaining[n] -= c
        table.place(n, i)
        if full:
            has[n, blocks_of[i]] = True
            continue
        arrived = blocks_of[i][~has[n, blocks_of[i]]]
        has[n, arrived] = True
        affected = {j for g_ in arrived.tolist() for j in models_of[g_]}
        affected.discard(i)
        for j in affected:
            if placed[n, j] or gains[n, j] <= tiny:
                continue
            if j in parked[n] or density:
                cj = cost(n, j)
                if cj > remaining[n]:
                    continue
                parked[n].discard(j)
                version[n, j] += 1
                heapq.heappush(heap, (-score(float(gains[n, j]), cj), n, j, int(version[n, j])))
    return chosen, table.covered_weight, pops


def _best_single(problem: PlacementProblem) -> tuple[float, int, int] | None:
    table = GainTable(problem)
    fits = problem.model_sizes[None, :] <= np.array(problem.capacities, dtype=np.int64)[:, None]
    masked = np.where(fits, table.gain, -1.0)
    if masked.size == 0:
        return None
    n, i = np.unravel_index(int(np.argmax(masked)), masked.shape)
    if masked[n, i] <= 0:
        return None
    return float(masked[n, i]), int(n), int(i)
