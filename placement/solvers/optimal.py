"""Exact TrimCaching placement as a mixed-integer program solved by HiGHS (`scipy.optimize.milp`).

    maximise   sum_r w_r h_r / W
    subject to x_{n,i} <= y_{n,j}             for every block group j in B_i
               sum_j D_j y_{n,j} <= Q_n       for every server n
               h_r <= sum_{n in E_r} x_{n,i(r)}  for every request r
               x, y in {0, 1}, 0 <= h <= 1    (h is integral at an optimum, so it stays continuous)

The MILP is NP-hard in general; HiGHS runs branch and bound with a time limit, and the
result reports its dual bound and optimality gap. `lp_relaxation_bound` solves the LP
relaxation, an upper bound on the hit ratio for instances too big for the MILP.
"""

import logging
import time
from typing import Any, Final

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array

from placement.problem import Placement, PlacementProblem, make_placement
from placement.solvers.gains import GainTable
from placement.solvers.trimcaching_gen import greedy_placement

__all__ = ("DEFAULT_TIME_LIMIT_S", "lp_relaxation_bound", "optimal")
log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S: Final = 60.0


def optimal(
    problem: PlacementProblem,
    *,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    mip_rel_gap: float = 1e-9,
) -> Placement:
    """Exact optimum, or within `time_limit_s` the better of HiGHS's incumbent and the greedy.

    `info` holds `optimal` (proved), `bound` (dual bound on the hit ratio) and `gap`.
    """
    start = time.perf_counter()
    if problem.total_weight <= 0 or len(problem.request_model) == 0 or not problem.servers:
        return make_placement(
            problem,
            [set() for _ in problem.servers],
            solver="optimal",
            runtime_s=time.perf_counter() - start,
            info={"status": "trivial", "gap": 0.0, "bound": 0.0, "optimal": True},
        )
    c, constraints, n_x, n_y = _formulation(problem)
    integrality = np.concatenate([np.ones(n_x + n_y), np.zeros(len(c) - n_x - n_y)])
    options: dict[str, Any] = {"disp": False, "mip_rel_gap": mip_rel_gap}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    res = milp(c, constraints=constraints, integrality=integrality, bounds=Bounds(0, 1), options=options)
    n_servers, n_models = len(problem.servers), len(problem.models)
    bound = -float(res.mip_dual_bound) if getattr(res, "mip_dual_bound", None) is not None else None
    info: dict[str, Any] = {"status": res.message, "milp_status": int(res.status)}
    if res.x is None:
        log.warning("MILP found no solution within %s s; falling back to the greedy", time_limit_s)
        chosen, _ = greedy_placement(problem, method="gain", charge="shared")
        info["fallback"] = "trimcaching-gen"
    else:
        x = res.x[:n_x].reshape(n_servers, n_models) > 0.5
        chosen = _repair(problem, [set(np.flatnonzero(x[n]).tolist()) for n in range(n_servers)])
    placement = make_placement(problem, chosen, solver="optimal", runtime_s=0.0, info={})
    if res.status != 0:
        # Time limit: HiGHS's incumbent can be worse than the greedy; keep the better one.
        greedy, _ = greedy_placement(problem, method="density", charge="shared")
        alternative = make_placement(problem, greedy, solver="optimal", runtime_s=0.0, info={})
        if alternative.hit_ratio > placement.hit_ratio:
            chosen, placement = greedy, alternative
            info["incumbent"] = "trimcaching-gen-density"
    if bound is not None and np.isfinite(bound):
        info["bound"] = max(bound, placement.hit_ratio)
        info["gap"] = max(0.0, info["bound"] - placement.hit_ratio) / max(info["bound"], 1e-12)
    info["optimal"] = bool(res.status == 0)
    return make_placement(problem, chosen, solver="optimal", runtime_s=time.perf_counter() - start, info=info)


def lp_relaxation_bound(problem: PlacementProblem, *, time_limit_s: float | None = None) -> float:
    """Upper bound on the hit ratio from the LP relaxation of the MILP (1.0 if it times out)."""
    if problem.total_weight <= 0 or len(problem.request_model) == 0 or not problem.servers:
        return 0.0
    c, constraints, _, _ = _formulation(problem)
    options: dict[str, Any] = {"disp": False}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    res = milp(
        c,
        constraints=constraints,
        integrality=np.zeros(len(c)),
        bounds=Bounds(0, 1),
        options=options,
    )
    if res.status != 0 or res.fun is None:
        return 1.0
    return float(min(1.0, -res.fun))


def _formulation(problem: PlacementProblem) -> tuple[np.ndarray, list[LinearConstraint], int, int]:
    n_servers, n_models, n_groups = (
        len(problem.servers),
        len(problem.models),
        len(problem.block_members),
    )
    n_req = len(problem.request_model)
    n_x, n_y = n_servers * n_models, n_servers * n_groups
    c = np.zeros(n_x + n_y + n_req)
    c[n_x + n_y :] = -problem.request_weight / problem.total_weight
    # x_{n,i} - y_{n,j} <= 0
    pairs_i = np.array([i for i, b in enumerate(problem.model_blocks) for _ in b], dtype=np.int64)
    pairs_j = np.array([j for b in problem.model_blocks for j in b], dtype=np.int64)
    n_pairs = len(pairs_i)
    server_rep = np.repeat(np.arange(n_servers), n_pairs)
    rows = np.arange(n_servers * n_pairs)
    link = coo_array(
        (
            np.concatenate([np.ones(len(rows)), -np.ones(len(rows))]),
            (
                np.concatenate([rows, rows]),
                np.concatenate(
                    [
                        server_rep * n_models + np.tile(pairs_i, n_servers),
                        n_x + server_rep * n_groups + np.tile(pairs_j, n_servers),
                    ]
                ),
            ),
        ),
        shape=(len(rows), len(c)),
    )
    # sum_j (D_j / Q_n) y_{n,j} <= 1; servers with Q_n = 0 get D_j y <= 0.
    caps = np.array(problem.capacities, dtype=float)
    scale = np.where(caps > 0, caps, 1.0)
    cap_rows = np.repeat(np.arange(n_servers), n_groups)
    cap_cols = n_x + np.arange(n_y)
    cap_vals = (problem.block_sizes[None, :] / scale[:, None]).ravel()
    capacity = csr_array((cap_vals, (cap_rows, cap_cols)), shape=(n_servers, len(c)))
    cap_ub = np.where(caps > 0, 1.0, 0.0)
    # h_r - sum_{n in E_r} x_{n, i(r)} <= 0
    counts = np.diff(problem.eligible_indptr)
    entry_row = np.repeat(np.arange(n_req), counts)
    cover = coo_array(
        (
            np.concatenate([np.ones(n_req), -np.ones(len(entry_row))]),
            (
                np.concatenate([np.arange(n_req), entry_row]),
                np.concatenate(
                    [
                        n_x + n_y + np.arange(n_req),
                        problem.eligible_indices * n_models + problem.request_model[entry_row],
                    ]
                ),
            ),
        ),
        shape=(n_req, len(c)),
    )
    constraints = [
        LinearConstraint(link.tocsr(), -np.inf, 0.0),
        LinearConstraint(capacity, -np.inf, cap_ub),
        LinearConstraint(cover.tocsr(), -np.inf, 0.0),
    ]
    return c, constraints, n_x, n_y


def _repair(problem: PlacementProblem, chosen: list[set[int]]) -> list[set[int]]:
    """Drop models until each server fits exactly in bytes (the MILP works to a float tolerance)."""
    table = GainTable(problem)
    for n, capacity in enumerate(problem.capacities):
        while True:
            groups = {g for i in chosen[n] for g in problem.model_blocks[i]}
            used = int(problem.block_sizes[list(groups)].sum()) if groups else 0
            if used <= capacity:
                break
            worst = min(chosen[n], key=lambda i: (table.gain[n, i], i))
            log.warning(
                "MILP answer over capacity on %s by %d bytes; dropping %s",
                problem.servers[n],
                used - capacity,
                problem.models[worst],
            )
            chosen[n].discard(worst)
    return chosen
