"""Improvement phase after a greedy placement: per-server swaps while the hit ratio rises.

Moves, tried server by server in rounds until a round improves nothing or the time budget is
spent (every accepted move strictly raises the covered weight, so the result is never worse
than the start, and every move keeps the server within its capacity, shared blocks counted once):

- add: place a model whose blocks still fit (its marginal bytes: blocks not yet on the server);
- swap: place a model that does not fit after dropping models from the server, cheapest loss
  per freed byte first, then fill the room left with further candidates that fit, when the
  weight gained exceeds the weight lost. A dropped model frees only the blocks no model left
  on the server uses (a shared backbone stays).

Gains and losses are exact: gain[n, i] is the weight of requests for i that n serves in time
and no server covers yet, loss[n, i] the weight of requests only n covers, through model i.
After a move only the columns of the models involved are recomputed.
"""

import time
from typing import Final

import numpy as np

from placement.problem import PlacementProblem

__all__ = ("DEFAULT_TIME_BUDGET_S", "improve")

DEFAULT_TIME_BUDGET_S: Final = 10.0
CANDIDATES_PER_SERVER: Final = 24
_TINY_REL: Final = 1e-9


def improve(
    problem: PlacementProblem, chosen: list[set[int]], *, time_budget_s: float = DEFAULT_TIME_BUDGET_S
) -> tuple[list[set[int]], dict[str, float | int]]:
    """A placement at least as good as `chosen` (per-server model indices), within the budget."""
    start = time.perf_counter()
    state = _State(problem, chosen)
    before = state.covered_weight()
    moves = rounds = 0
    tiny = _TINY_REL * max(problem.total_weight, 1e-300)
    improved = True
    while improved and time.perf_counter() - start < time_budget_s:
        improved = False
        rounds += 1
        for n in range(len(problem.servers)):
            if time.perf_counter() - start >= time_budget_s:
                break
            while state.best_move(n, tiny):
                moves += 1
                improved = True
                if time.perf_counter() - start >= time_budget_s:
                    break
    after = state.covered_weight()
    total = max(problem.total_weight, 1e-300)
    info: dict[str, float | int] = {
        "ls_moves": moves,
        "ls_rounds": rounds,
        "ls_gain": (after - before) / total,
        "ls_seconds": round(time.perf_counter() - start, 4),
    }
    return [set(s) for s in state.chosen], info


class _State:
    """Placement, per-server block reference counts, coverage counts, gain and loss tables."""

    def __init__(self, problem: PlacementProblem, chosen: list[set[int]]) -> None:
        self.p = problem
        n_servers, n_models = len(problem.servers), len(problem.models)
        self.chosen = [set(s) for s in chosen]
        self.blocks_of = [np.array(b, dtype=np.int64) for b in problem.model_blocks]
        self.ref = np.zeros((n_servers, len(problem.block_sizes)), dtype=np.int32)
        self.placed = np.zeros((n_servers, n_models), dtype=bool)
        for n, models in enumerate(self.chosen):
            for i in models:
                self.ref[n, self.blocks_of[i]] += 1
                self.placed[n, i] = True
        self.capacity = np.array(problem.capacities, dtype=np.int64)
        self.used = np.array([int(problem.block_sizes[self.ref[n] > 0].sum()) for n in range(n_servers)])
        counts = np.diff(problem.eligible_indptr)
        self.entry_row = np.repeat(np.arange(len(problem.request_model)), counts)
        self.entry_model = problem.request_model[self.entry_row]
        flags = self.placed[problem.eligible_indices, self.entry_model]
        self.cover = np.bincount(self.entry_row, weights=flags, minlength=len(problem.request_model)).astype(np.int64)
        self.gain = np.zeros((n_servers, n_models))
        self.loss = np.zeros((n_servers, n_models))
        self._refresh(range(n_models))

    def covered_weight(self) -> float:
        return float(self.p.request_weight[self.cover > 0].sum())

    def best_move(self, n: int, tiny: float) -> bool:
        """Apply the first improving add or swap on server n (best gain first); False if none."""
        gains = self.gain[n]
        candidates = np.flatnonzero((gains > tiny) & ~self.placed[n])
        if len(candidates) == 0:
            return False
        candidates = candidates[np.argsort(-gains[candidates], kind="stable")][:CANDIDATES_PER_SERVER]
        free = int(self.capacity[n] - self.used[n])
        sizes = self.p.block_sizes
        for i in candidates.tolist():
            blocks = self.blocks_of[i]
            need = int(sizes[blocks[self.ref[n, blocks] == 0]].sum())
            if need <= free:
                self._apply(n, add=[i], drop=[])
                return True
            found = self._drops(n, i, need - free)
            if found is None:
                continue
            drop, lost, ref = found
            ref[blocks] += 1
            room = int(self.capacity[n]) - int(sizes[ref > 0].sum())
            added, gained = [i], float(gains[i])
            for j in candidates.tolist():
                if j == i or j in drop:
                    continue
                extra = self.blocks_of[j]
                cost = int(sizes[extra[ref[extra] == 0]].sum())
                if cost <= room:
                    ref[extra] += 1
                    room -= cost
                    added.append(j)
                    gained += float(gains[j])
            if gained - lost > tiny:
                self._apply(n, add=added, drop=drop)
                return True
        return False

    def _drops(self, n: int, i: int, room: int) -> tuple[list[int], float, np.ndarray] | None:
        """Models to drop from n, least loss per freed byte first, freeing `room` bytes i does
        not use; with the weight lost and the block counts left. None if impossible."""
        keep_blocks = np.zeros(len(self.p.block_sizes), dtype=bool)
        keep_blocks[self.blocks_of[i]] = True
        ref = self.ref[n].copy()
        on = list(self.chosen[n])
        dropped: list[int] = []
        lost = freed = 0.0
        while freed < room:
            best, best_score, best_freed = -1, np.inf, 0
            for j in on:
                blocks = self.blocks_of[j]
                alone = blocks[(ref[blocks] == 1) & ~keep_blocks[blocks]]
                f = int(self.p.block_sizes[alone].sum())
                if f <= 0:
                    continue
                score = self.loss[n, j] / f
                if score < best_score:
                    best, best_score, best_freed = j, score, f
            if best < 0:
                return None
            lost += float(self.loss[n, best])
            freed += best_freed
            ref[self.blocks_of[best]] -= 1
            on.remove(best)
            dropped.append(best)
        return dropped, lost, ref

    def _apply(self, n: int, *, add: list[int], drop: list[int]) -> None:
        sizes = self.p.block_sizes
        for j in drop:
            blocks = self.blocks_of[j]
            self.ref[n, blocks] -= 1
            self.used[n] -= int(sizes[blocks[self.ref[n, blocks] == 0]].sum())
            self.chosen[n].discard(j)
            self.placed[n, j] = False
            self._recount(j)
        for i in add:
            blocks = self.blocks_of[i]
            self.used[n] += int(sizes[blocks[self.ref[n, blocks] == 0]].sum())
            self.ref[n, blocks] += 1
            self.chosen[n].add(i)
            self.placed[n, i] = True
            self._recount(i)
        assert self.used[n] <= self.capacity[n], "a local-search move overfilled a server"
        self._refresh([*add, *drop])

    def _span(self, i: int) -> tuple[int, int, int, int]:
        a, b = int(self.p.model_request_ptr[i]), int(self.p.model_request_ptr[i + 1])
        return a, b, int(self.p.eligible_indptr[a]), int(self.p.eligible_indptr[b])

    def _recount(self, i: int) -> None:
        a, b, lo, hi = self._span(i)
        if a == b:
            return
        flags = self.placed[self.p.eligible_indices[lo:hi], i]
        self.cover[a:b] = np.bincount(self.entry_row[lo:hi] - a, weights=flags, minlength=b - a).astype(np.int64)

    def _refresh(self, models: "range | list[int]") -> None:
        n_servers = len(self.p.servers)
        weight = self.p.request_weight
        for i in models:
            a, b, lo, hi = self._span(i)
            self.gain[:, i] = 0.0
            self.loss[:, i] = 0.0
            if a == b:
                continue
            servers = self.p.eligible_indices[lo:hi]
            rows = self.entry_row[lo:hi]
            cover = self.cover[rows]
            w = weight[rows]
            self.gain[:, i] = np.bincount(servers, weights=np.where(cover == 0, w, 0.0), minlength=n_servers)
            only = (cover == 1) & self.placed[servers, i]
            self.loss[:, i] = np.bincount(servers, weights=np.where(only, w, 0.0), minlength=n_servers)
