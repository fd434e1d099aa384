"""Request statistics per model revision and client cell, decayed exponentially over time."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cachenet.protocol.node import DemandRow

__all__ = ("DemandStats",)

DEFAULT_DEMAND_HALF_LIFE_S: Final = 3600.0
_FORGET_BELOW: Final = 1e-6


@dataclass
class _Counter:
    value: float
    at: float


class DemandStats:
    """Decayed request counts keyed by (model, revision, cell); a count halves every `half_life_s`."""

    def __init__(
        self, *, half_life_s: float = DEFAULT_DEMAND_HALF_LIFE_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.half_life_s = half_life_s
        self._clock = clock
        self._counts: dict[tuple[str, str, str], _Counter] = {}

    def record(self, model: str, revision: str, *, cell: str | None, weight: float = 1.0) -> None:
        """Count a (possibly fractional) request."""
        key = (model, revision, cell or "")
        now = self._clock()
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

    def _decayed(self, c: _Counter, now: float) -> float:
        return c.value * math.pow(2.0, -(now - c.at) / self.half_life_s)
