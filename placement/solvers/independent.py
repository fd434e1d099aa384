"""Independent Caching: the sharing-unaware baseline that charges every model's full size."""

import time

from placement.problem import Placement, PlacementProblem, make_placement
from placement.solvers.trimcaching_gen import Method, greedy_placement

__all__ = ("independent",)


def independent(problem: PlacementProblem, *, method: Method = "gain") -> Placement:
    """Greedy placement whose capacity check charges the sum of full model sizes.

    The same lazy greedy as `trimcaching_gen` (Qu et al., 2024, baseline "Independent
    Caching"), except that a model costs its full size S_i on every server, as if no block
    were shared. The stored blocks are still the union, so the real usage is never larger
    than the charged one and the placement is feasible.
    """
    start = time.perf_counter()
    chosen, info = greedy_placement(problem, method=method, charge="full")
    return make_placement(problem, chosen, solver="independent", runtime_s=time.perf_counter() - start, info=info)
