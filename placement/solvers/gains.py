"""Exact marginal gains of (server, model) pairs, updated as requests become covered."""

import numpy as np

from placement.problem import PlacementProblem

__all__ = ("GainTable",)


class GainTable:
    """gain[n, i] = weight of uncovered requests for model i that server n could serve in time.

    Placing (n, i) covers the requests of i eligible at n and subtracts their weights from
    gain[:, i]. Gains never increase (the objective is a weighted coverage function, hence
    submodular in the set of placed pairs). Each request is covered once, so all updates
    together cost O(total eligible pairs).
    """

    __slots__ = ("_counts", "_entry_row", "_problem", "covered", "covered_weight", "gain")

    def __init__(self, problem: PlacementProblem) -> None:
        self._problem = problem
        n_servers, n_models = len(problem.servers), len(problem.models)
        self._counts = np.diff(problem.eligible_indptr)
        self._entry_row = np.repeat(np.arange(len(problem.request_model)), self._counts)
        flat = problem.eligible_indices * n_models + problem.request_model[self._entry_row]
        weights = problem.request_weight[self._entry_row]
        self.gain = np.bincount(flat, weights=weights, minlength=n_servers * n_models).reshape(n_servers, n_models)
        self.covered = np.zeros(len(problem.request_model), dtype=bool)
        self.covered_weight = 0.0

    def place(self, server: int, model: int) -> float:
        """Cover the requests of `model` that `server` serves in time; return the weight covered."""
        p = self._problem
        a, b = int(p.model_request_ptr[model]), int(p.model_request_ptr[model + 1])
        if a == b:
            return 0.0
        lo, hi = int(p.eligible_indptr[a]), int(p.eligible_indptr[b])
        servers = p.eligible_indices[lo:hi]
        rows = self._entry_row[lo:hi]
        new = np.unique(rows[servers == server])
        new = new[~self.covered[new]]
        if len(new) == 0:
            return 0.0
        self.covered[new] = True
        fresh = np.zeros(b - a, dtype=bool)
        fresh[new - a] = True
        sel = fresh[rows - a]
        np.subtract.at(self.gain[:, model], servers[sel], p.request_weight[rows[sel]])
        # Guard against float drift below zero.
        np.maximum(self.gain[:, model], 0.0, out=self.gain[:, model])
        gained = float(p.request_weight[new].sum())
        self.covered_weight += gained
        return gained
