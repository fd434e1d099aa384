"""Frequency policies: LFU, and LFU over decayed use where a block also earns its models' demand."""

import heapq
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

from cachenet.errors import BadInput
from placement.replacement.base import DEFAULT_HALF_LIFE_S, FORGET_DEMAND, REBASE_EXPONENT, BlockPolicy

__all__ = ("LFUPolicy", "LazyHeap", "SharingLFUPolicy")


class LazyHeap:
    """A min-heap of (value, seq, id) with lazy deletion: the newest entry of an id is valid."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._current: dict[str, tuple[float, int]] = {}
        self._seq = 0

    def push(self, key: str, value: float) -> None:
        self._seq += 1
        self._current[key] = (value, self._seq)
        heapq.heappush(self._heap, (value, self._seq, key))
        if len(self._heap) > 4 * len(self._current) + 64:
            self._heap = [(v, s, k) for k, (v, s) in self._current.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        self._current.pop(key, None)

    def clear(self) -> None:
        self._heap.clear()
        self._current.clear()

    def worst_first(self) -> Generator[str, None, None]:
        """Yield ids by increasing (value, seq); popped entries go back when the caller closes."""
        popped: list[tuple[float, int, str]] = []
        try:
            while self._heap:
                entry = heapq.heappop(self._heap)
                value, seq, key = entry
                if self._current.get(key) != (value, seq):
                    continue
                popped.append(entry)
                yield key
        finally:
            for entry in popped:
                heapq.heappush(self._heap, entry)


class LFUPolicy(BlockPolicy):
    """Evicts the least frequently used block first, ties broken by least recent use.

    Value of block b: the number of inserts and hits since b was last inserted (no decay,
    forgotten on eviction). Same decisions as libCacheSim's LFU, which also breaks ties by LRU.
    """

    name = "lfu"

    def __init__(self, capacity_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity_bytes, clock=clock)
        self._freq: dict[str, int] = {}
        self._heap = LazyHeap()

    def _on_insert(self, block_id: str) -> None:
        self._freq[block_id] = 1
        self._heap.push(block_id, 1)

    def _on_touch(self, block_id: str) -> None:
        self._freq[block_id] += 1
        self._heap.push(block_id, self._freq[block_id])

    def _on_remove(self, block_id: str) -> None:
        del self._freq[block_id]
        self._heap.discard(block_id)

    def _on_clear(self) -> None:
        self._freq.clear()
        self._heap.clear()

    def _worst_first(self) -> Generator[str, None, None]:
        return self._heap.worst_first()

    def _state_value(self, block_id: str) -> float | None:
        return self._freq[block_id]

    def _restore_value(self, block_id: str, value: Any) -> None:
        self._freq[block_id] = max(1, int(value))
        self._heap.push(block_id, self._freq[block_id])


class SharingLFUPolicy(BlockPolicy):
    """LFU over exponentially decayed use, where a block also earns the demand of its models.

    With decay d(t) = 2 ** (-(now - t) / half_life_s), the value of block b is

        V(b) = sum over inserts and hits of b at t_i of d(t_i) + sum over m in models(b) of D(m)
        D(m) = sum over record_request(m, w) at t_j of w * d(t_j)

    so a backbone shared by many LoRA variants is worth the summed demand of all of them and is
    not evicted for one adapter. The lowest V goes first (not per byte: a backbone block is only
    useful together with the rest of the backbone); ties go to the least recently updated.
    Scores are kept scaled by 2 ** ((now - epoch) / half_life_s), so nothing decays in place.
    """

    name = "sharing-lfu"

    def __init__(
        self,
        capacity_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
    ) -> None:
        if not half_life_s > 0.0:
            raise BadInput(f"half_life_s must be > 0, got {half_life_s!r}")
        super().__init__(capacity_bytes, clock=clock)
        self.half_life_s = half_life_s
        self._epoch = clock()
        self._own: dict[str, float] = {}
        self._score: dict[str, float] = {}
        self._demand: dict[str, float] = {}
        self._heap = LazyHeap()

    def value(self, block_id: str) -> float:
        """V(b) at the current time (0.0 if the block is absent)."""
        return self._score.get(block_id, 0.0) * self._decay_since_epoch()

    def demand(self, model: str) -> float:
        """D(m) at the current time."""
        return self._demand.get(model, 0.0) * self._decay_since_epoch()

    def _on_insert(self, block_id: str) -> None:
        self._own[block_id] = self._weight_now()
        self._refresh(block_id)

    def _on_touch(self, block_id: str) -> None:
        w = self._weight_now()
        self._own[block_id] += w
        self._score[block_id] += w
        self._push(block_id)

    def _on_remove(self, block_id: str) -> None:
        del self._own[block_id], self._score[block_id]
        self._heap.discard(block_id)

    def _on_clear(self) -> None:
        self._own.clear()
        self._score.clear()
        self._demand.clear()
        self._heap.clear()
        self._epoch = self._clock()

    def _on_request(self, model: str, weight: float) -> None:
        delta = weight * self._weight_now()
        self._demand[model] = self._demand.get(model, 0.0) + delta
        for block_id in self._blocks_of.get(model, ()):
            self._score[block_id] += delta
            self._push(block_id)

    def _on_models_changed(self, block_id: str) -> None:
        self._refresh(block_id)

    def _worst_first(self) -> Generator[str, None, None]:
        return self._heap.worst_first()

    def _state_value(self, block_id: str) -> float | None:
        return self._own[block_id] * self._decay_since_epoch()

    def _restore_value(self, block_id: str, value: Any) -> None:
        self._own[block_id] = float(value) * self._weight_now()
        self._refresh(block_id)

    def _extra_state(self) -> dict[str, Any]:
        decay = self._decay_since_epoch()
        return {
            "half_life_s": self.half_life_s,
            "demand": {m: d * decay for m, d in sorted(self._demand.items())},
        }

    @classmethod
    def _options_from_state(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        return {"half_life_s": float(state["half_life_s"])}

    def _restore_extra(self, state: Mapping[str, Any]) -> None:
        w = self._weight_now()
        self._demand = {str(m): float(d) * w for m, d in state["demand"].items()}
        for block_id in list(self._score):
            self._refresh(block_id)

    def _refresh(self, block_id: str) -> None:
        score = self._own[block_id] + sum(self._demand.get(m, 0.0) for m in self._models[block_id])
        self._score[block_id] = score
        self._push(block_id)

    def _push(self, block_id: str) -> None:
        self._heap.push(block_id, self._score[block_id])

    def _decay_since_epoch(self) -> float:
        return float(2.0 ** (-(self._clock() - self._epoch) / self.half_life_s))

    def _weight_now(self) -> float:
        now = self._clock()
        exponent = (now - self._epoch) / self.half_life_s
        if exponent > REBASE_EXPONENT:
            self._rebase(now, exponent)
            exponent = 0.0
        return float(2.0**exponent)

    def _rebase(self, now: float, exponent: float) -> None:
        factor = 2.0**-exponent
        self._epoch = now
        self._own = {b: v * factor for b, v in self._own.items()}
        self._demand = {
            m: d * factor for m, d in self._demand.items() if m in self._blocks_of or d * factor > FORGET_DEMAND
        }
        # re-push in the old tie order so that equal values keep their ranking
        order = list(self._heap.worst_first())
        self._heap.clear()
        for block_id in order:
            self._score[block_id] *= factor
            self._push(block_id)
