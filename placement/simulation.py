"""Hit ratio vs per-server capacity: one demand solved at capacities that are fractions of the catalogue."""

from collections.abc import Sequence
from typing import Any

from placement.curves import capacity_curve
from placement.inputs import PlacementInputs
from placement.problem import build_problem
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
    per_server = [max(1, int(fraction * total)) for fraction in fractions]
    curves = capacity_curve(problem, per_server, solvers)
    for points in curves.values():
        for point, fraction in zip(points, fractions, strict=True):
            point["fraction"] = fraction
    capacities = [s.capacity_bytes for s in topology.servers]
    return {
        "available": True,
        "catalogue_bytes": total,
        "models": len(inputs.models),
        "demand": inputs.demand_source,
        "current_fraction": sum(capacities) / len(capacities) / total if capacities else None,
        "curves": curves,
    }
