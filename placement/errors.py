"""Errors of the placement controller, rooted in `PlacementError` (itself a `CachenetError`).

CachenetError
└── PlacementError
    ├── TopologyInvalid (BadInput)          a topology file or dict is malformed
    ├── ScenarioInvalid (BadInput)          a scenario file, model list or demand is malformed
    ├── PlacementInfeasible (BadInput)      a placement breaks a capacity or misses blocks
    ├── SolverRefused (BadInput)            a solver will not run on this instance
    └── Unreachable (BadInput)              a node cannot be reached over the backhaul
"""

from cachenet.errors import BadInput, CachenetError

__all__ = (
    "PlacementError",
    "PlacementInfeasible",
    "ScenarioInvalid",
    "SolverRefused",
    "TopologyInvalid",
    "Unreachable",
)


class PlacementError(CachenetError):
    """Root of every error the placement controller raises on purpose."""


class TopologyInvalid(PlacementError, BadInput):
    """A topology that cannot be used; `field` names the offending entry."""


class ScenarioInvalid(PlacementError, BadInput):
    """A scenario, model catalogue or demand table that cannot be used."""


class PlacementInfeasible(PlacementError, BadInput):
    """A placement that exceeds a capacity, lacks a model's blocks or names unknown ids."""


class SolverRefused(PlacementError, BadInput):
    """A solver that will not run on this instance (unknown name, too many shared blocks)."""


class Unreachable(PlacementError, BadInput):
    """A node that the backhaul graph cannot reach."""
