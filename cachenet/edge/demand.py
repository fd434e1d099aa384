"""Request statistics per model revision and client cell, decayed exponentially over time.

Clients create the keys (the cell comes from a request header), so the table is capped:
at `max_keys` entries, counts that decayed below `_PRUNE_BELOW` are dropped, and if it is
still full a new (model, revision, cell) is counted without its cell.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cachenet.protocol.node import DemandRow

__all__ = ("DemandStats", "MAX_DEMAND_KEYS")

DEFAULT_DEMAND_HALF_LIFE_S: Final = 3600.0
MAX_DEMAND_KEYS: Final = 4096
_FORGET_BELOW: Final = 1e-6
_PRUNE_BELOW: Final = 0.01
_PRUNE_EVERY_S: Final = 60.0  # a full table is scanned at most this often (not per request)


@dataclass
class _Counter:
    value: float
    at: float


class DemandStats:
    """Decayed request counts keyed by (model, revision, cell); a count halves every `half_life_s`."""

    def __init__(
        self,
        *,
        half_life_s: float = DEFAULT_DEMAND_HALF_LIFE_S,
        max_keys: int = MAX_DEMAND_KEYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.half_life_s = half_life_s
        self.max_keys = max_keys
        self._pruned_at = -math.inf
        self._clock = clock
        self._counts: dict[tuple[str, str, str], _Counter] = {}

    def record(self, model: str, revision: str, *, cell: str | None, weight: float = 1.0) -> None:
        """Count a (possibly fractional) request."""
        key = (model, revision, cell or "")
        now = self._clock()
        c = self._counts.get(key)
        if c is None and len(self._counts) >= self.max_keys:
            if now - self._pruned_at >= _PRUNE_EVERY_S:
                self._pruned_at = now
                self._prune(now)
            if len(self._counts) >= self.max_keys:
                key = (model, revision, "")
                c = self._counts.get(key)
        if c is None:
            self._counts[key] = _Counter(weight, now)
        else:
            c.value = self._decayed(c, now) + weight
            c.at = now

    def snapshot(self) -> list[DemandRow]:
        """Current decayed counts, largest first."""
        now = self._clock()
        rows = []
        for (model, revision, cell), c in list(self._counts.items()):
            value = self._decayed(c, now)
            if value < _FORGET_BELOW:
                del self._counts[(model, revision, cell)]
                continue
            rows.append(DemandRow(model, revision, cell or None, value))
        rows.sort(key=lambda r: -r.count)
        return rows

    def per_model(self) -> dict[str, float]:
        """Decayed demand summed over revisions and cells, per model name."""
        out: dict[str, float] = {}
        for row in self.snapshot():
            out[row.model] = out.get(row.model, 0.0) + row.count
        return out

    def __len__(self) -> int:
        return len(self._counts)

    def _prune(self, now: float) -> None:
        for key, c in list(self._counts.items()):
            if self._decayed(c, now) < _PRUNE_BELOW:
                del self._counts[key]

    def _decayed(self, c: _Counter, now: float) -> float:
        return c.value * math.pow(2.0, -(now - c.at) / self.half_life_s)
