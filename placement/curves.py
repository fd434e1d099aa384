"""Hit ratio vs per-server capacity, per solver: one computation for the dashboard and the benches.

The controller's `/v1/simulation` (the dashboard's "hit ratio vs capacity" chart) and
`bench.placement_ls` both call `capacity_curve`, so the page shows what the bench measures.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from placement.errors import SolverRefused
from placement.problem import PlacementProblem, check_feasible
from placement.solve import solve

__all__ = ("capacity_curve",)

_INFO_KEYS = ("optimal", "bound", "gap", "greedy_hit_ratio", "ls_gain")


def capacity_curve(
    problem: PlacementProblem,
    capacities: Sequence[int],
    solvers: Sequence[str],
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """For each solver, one point per capacity (every server set to it): hit ratio, runtime, extras.

    A solver that refuses an instance gets `hit_ratio: None` and the reason.
    """
    curves: dict[str, list[dict[str, Any]]] = {s: [] for s in solvers}
    for capacity in capacities:
        scaled = dataclasses.replace(problem, capacities=(max(0, int(capacity)),) * len(problem.servers))
        for solver in solvers:
            point: dict[str, Any] = {"capacity_bytes": int(capacity)}
            try:
                placement = solve(scaled, solver=solver, **dict((options or {}).get(solver, {})))
            except SolverRefused as e:
                point.update(hit_ratio=None, refused=e.message)
            else:
                check_feasible(scaled, placement)
                point.update(hit_ratio=placement.hit_ratio, runtime_s=placement.runtime_s)
                point.update({k: v for k, v in placement.info.items() if k in _INFO_KEYS})
            curves[solver].append(point)
    return curves
