"""The solver registry: every placement solver by name, and `solve` to run one."""

import inspect
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from placement.errors import SolverRefused
from placement.problem import Placement, PlacementProblem
from placement.solvers.improved import trimcaching_gen_ls, trimcaching_ls, trimcaching_spec_ls
from placement.solvers.independent import independent
from placement.solvers.optimal import optimal
from placement.solvers.trimcaching_gen import trimcaching_gen
from placement.solvers.trimcaching_spec import trimcaching_spec

__all__ = ("SOLVERS", "Solver", "solve", "solver_options")
log = logging.getLogger(__name__)

Solver = Callable[..., Placement]

SOLVERS: Final[dict[str, Solver]] = {
    "independent": independent,
    "optimal": optimal,
    "trimcaching-gen": trimcaching_gen,
    "trimcaching-gen-density": partial(trimcaching_gen, method="density"),
    "trimcaching-spec": trimcaching_spec,
    "trimcaching-gen-ls": trimcaching_gen_ls,
    "trimcaching-gen-density-ls": partial(trimcaching_gen_ls, method="density"),
    "trimcaching-spec-ls": trimcaching_spec_ls,
    "trimcaching-ls": trimcaching_ls,
}


def solver_options(solver: str) -> tuple[str, ...]:
    """Keyword options a named solver accepts."""
    if solver not in SOLVERS:
        raise SolverRefused(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}", solver=solver)
    params = inspect.signature(SOLVERS[solver]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def solve(problem: PlacementProblem, *, solver: str, **options: Any) -> Placement:
    """Run the named solver with its keyword options (None values are left at their defaults).

    Raises:
        SolverRefused: unknown solver, an option that solver does not take, or the solver's refusal.
    """
    accepted = solver_options(solver)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise SolverRefused(
            f"solver {solver!r} takes no option {unknown[0]!r}; it accepts {list(accepted)}",
            solver=solver,
        )
    placement = SOLVERS[solver](problem, **given)
    log.info(
        "placement by %s: hit ratio %.4f in %.3f s",
        solver,
        placement.hit_ratio,
        placement.runtime_s,
    )
    return placement
