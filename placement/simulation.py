"""Hit ratio vs per-server capacity: one demand solved at capacities that are fractions of the catalogue."""

import dataclasses
from collections.abc import Sequence
from typing import Any

from placement.inputs import PlacementInputs
from placement.problem import build_problem
from placement.solve import solve
from placement.topology import Topology

__all__ = ("capacity_curves",)


def capacity_curves(
    topology: Topology, inputs: PlacementInputs, fractions: Sequence[float], solvers: Sequence[str]
) -> dict[str, Any]:
    """Solve the same demand with every server's capacity set to each fraction of the catalogue."""
    total = inputs.catalogue_bytes
    if not inputs.models or total <= 0:
        return {"available": False, "reason": "no model is published yet"}
    problem = build_problem(topology, inputs.models, inputs.demand, latency_requirements=inputs.latency or None)
    curves: dict[str, list[dict[str, float]]] = {}
    for solver in solvers:
        points = []
        for fraction in fractions:
            capacity = max(1, int(fraction * total))
            scaled = dataclasses.replace(problem, capacities=(capacity,) * len(problem.servers))
            points.append(
                {"fraction": fraction, "capacity_bytes": capacity, "hit_ratio": solve(scaled, solver=solver).hit_ratio}
            )
        curves[solver] = points
    capacities = [s.capacity_bytes for s in topology.servers]
    return {
        "available": True,
        "catalogue_bytes": total,
        "models": len(inputs.models),
        "demand": inputs.demand_source,
        "current_fraction": sum(capacities) / len(capacities) / total if capacities else None,
        "curves": curves,
    }
