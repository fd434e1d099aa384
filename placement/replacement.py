"""Replacement policies for an edge node's block store: LRU, LFU and sharing-aware variants.

Pure bookkeeping with no I/O: the edge node and the controller's simulator both drive it.
Ids are opaque strings (block ids at block granularity, model names at model granularity).
"""

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol, Self

from cachenet.errors import BadInput, CapacityExceeded

__all__ = (
    "AccessInfo",
    "DEFAULT_HALF_LIFE_S",
    "LFUPolicy",
    "LRUPolicy",
    "POLICIES",
    "ReplacementPolicy",
    "SharingLFUPolicy",
    "SharingLRUPolicy",
    "make_policy",
    "serve_request",
)

DEFAULT_HALF_LIFE_S: Final = 600.0
STATE_VERSION: Final = 1
# Scaled scores grow as 2**(elapsed / half-life); rebase them long before a float overflows.
_REBASE_EXPONENT: Final = 256.0
_FORGET_DEMAND: Final = 1e-12


class ReplacementPolicy(Protocol):
    """What an edge node calls to decide which stored blocks to keep under a byte capacity."""

    @property
    def capacity_bytes(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    @property
    def pinned(self) -> frozenset[str]: ...
    def __contains__(self, block_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def admit(self, block_id: str, size: int) -> bool: ...
    def insert(self, block_id: str, size: int, *, models: Iterable[str] = ()) -> None: ...
    def touch(self, block_id: str, *, model: str | None = None) -> None: ...
    def record_request(self, model: str, *, weight: float = 1.0) -> None: ...
    def set_models(self, block_id: str, models: Iterable[str]) -> None: ...
    def models_of(self, block_id: str) -> frozenset[str]: ...
    def remove(self, block_id: str) -> None: ...
    def pin(self, block_ids: Iterable[str]) -> None: ...
    def unpin(self, block_ids: Iterable[str]) -> None: ...
    def victims(self, need_bytes: int) -> list[str]: ...
    def evict(self, need_bytes: int) -> list[str]: ...
    def clear(self) -> None: ...
    def to_state(self) -> dict[str, Any]: ...
    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        capacity_bytes: int,
        clock: Callable[[], float] = ...,
    ) -> Self: ...


@dataclass(frozen=True, slots=True)
class AccessInfo:
    """What serving one model request did to the cache (counts are objects: blocks or models)."""

    model: str
    hits: int
    misses: int
    hit_bytes: int
    miss_bytes: int
    evicted: tuple[str, ...]
    bypassed: tuple[str, ...]

    @property
    def model_hit(self) -> bool:
        """True when every object the request needed was already cached."""
        return self.misses == 0


class _BlockPolicy:
    """Shared bookkeeping: sizes, block↔model sharing, pins, victim selection, state.

    Subclasses rank blocks through the `_on_*` hooks and `_worst_first`.
    """

    name: ClassVar[str]

    def __init__(self, capacity_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
            raise BadInput(f"capacity_bytes must be an int, got {capacity_bytes!r}")
        if capacity_bytes < 0:
            raise BadInput(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._used = 0
        self._clock = clock
        self._sizes: dict[str, int] = {}
        # dicts, not sets, so that iteration (and float sums) are deterministic across runs
        self._models: dict[str, dict[str, None]] = {}
        self._blocks_of: dict[str, dict[str, None]] = {}
        self._pinned: set[str] = set()

    @property
    def capacity_bytes(self) -> int:
        """The byte budget."""
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes of the blocks tracked."""
        return self._used

    @property
    def pinned(self) -> frozenset[str]:
        """Ids never chosen as victims (they need not be stored yet)."""
        return frozenset(self._pinned)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def admit(self, block_id: str, size: int) -> bool:
        """Whether a block may be stored at all: False when it is larger than the capacity."""
        return 0 <= size <= self._capacity

    def insert(self, block_id: str, size: int, *, models: Iterable[str] = ()) -> None:
        """Record that a block is now stored (a use); inserting a tracked block counts as a hit.

        Raises:
            BadInput: a negative size, or a size that differs from the tracked one.
            CapacityExceeded: the block does not fit; call `evict(size)` first.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"block size must be an int >= 0, got {size!r}", block_id=block_id)
        old = self._sizes.get(block_id)
        if old is not None:
            if old != size:
                raise BadInput(f"block {block_id} is tracked with {old} bytes, not {size}", block_id=block_id)
            self.touch(block_id)
            self._add_models(block_id, models)
            return
        if self._used + size > self._capacity:
            raise CapacityExceeded(
                f"block {block_id} ({size} B) does not fit: {self._used} of {self._capacity} B used; evict first",
                block_id=block_id,
                need_bytes=size,
                capacity_bytes=self._capacity,
            )
        self._sizes[block_id] = size
        self._used += size
        self._models[block_id] = {}
        for model in models:
            self._link(block_id, model)
        self._on_insert(block_id)

    def touch(self, block_id: str, *, model: str | None = None) -> None:
        """Record a hit; `model` (the request it served) is learnt as a user; no-op if absent."""
        if block_id not in self._sizes:
            return
        self._on_touch(block_id)
        if model is not None:
            self._add_models(block_id, (model,))

    def record_request(self, model: str, *, weight: float = 1.0) -> None:
        """Record model-level demand (sharing-aware policies use it; plain ones ignore it)."""
        if not weight >= 0.0:
            raise BadInput(f"request weight must be >= 0, got {weight!r}", model=model)
        self._on_request(model, weight)

    def set_models(self, block_id: str, models: Iterable[str]) -> None:
        """Declare exactly which models use a tracked block; no-op if absent."""
        if block_id not in self._sizes:
            return
        for model in self._models[block_id]:
            self._unlink_model(block_id, model)
        self._models[block_id] = {}
        for model in models:
            self._link(block_id, model)
        self._on_models_changed(block_id)

    def models_of(self, block_id: str) -> frozenset[str]:
        """The models known to use a block (empty if absent)."""
        return frozenset(self._models.get(block_id, ()))

    def remove(self, block_id: str) -> None:
        """Forget a block (deleted for any reason); its pin, if any, stays; no-op if absent."""
        size = self._sizes.pop(block_id, None)
        if size is None:
            return
        self._used -= size
        for model in self._models.pop(block_id):
            self._unlink_model(block_id, model)
        self._on_remove(block_id)

    def pin(self, block_ids: Iterable[str]) -> None:
        """Protect blocks from eviction (for instance those a placement plan requires)."""
        self._pinned.update(block_ids)

    def unpin(self, block_ids: Iterable[str]) -> None:
        """Make blocks evictable again."""
        self._pinned.difference_update(block_ids)

    def victims(self, need_bytes: int) -> list[str]:
        """Blocks to delete, worst first, so that used + need <= capacity; removes nothing.

        The caller deletes them from disk, then calls `remove` for each.

        Raises:
            BadInput: a negative `need_bytes`.
            CapacityExceeded: even evicting every unpinned block would not make room.
        """
        if need_bytes < 0:
            raise BadInput(f"need_bytes must be >= 0, got {need_bytes}")
        excess = self._used + need_bytes - self._capacity
        if excess <= 0:
            return []
        chosen: list[str] = []
        freed = 0
        candidates = self._worst_first()
        try:
            for block_id in candidates:
                if block_id in self._pinned:
                    continue
                chosen.append(block_id)
                freed += self._sizes[block_id]
                if freed >= excess:
                    return chosen
        finally:
            candidates.close()
        raise CapacityExceeded(
            f"cannot make room for {need_bytes} B: capacity {self._capacity} B, "
            f"{self._used} B used, {self._used - freed} B pinned",
            need_bytes=need_bytes,
            capacity_bytes=self._capacity,
        )

    def evict(self, need_bytes: int) -> list[str]:
        """`victims(need_bytes)`, then `remove` each of them; returns the evicted ids."""
        chosen = self.victims(need_bytes)
        for block_id in chosen:
            self.remove(block_id)
        return chosen

    def clear(self) -> None:
        """Forget every block, pin and demand statistic."""
        self._sizes.clear()
        self._models.clear()
        self._blocks_of.clear()
        self._pinned.clear()
        self._used = 0
        self._on_clear()

    def to_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (blocks worst first, with their rank value)."""
        candidates = self._worst_first()
        try:
            order = list(candidates)
        finally:
            candidates.close()
        return {
            "policy": self.name,
            "version": STATE_VERSION,
            "blocks": [[b, self._sizes[b], sorted(self._models[b]), self._state_value(b)] for b in order],
            "pinned": sorted(self._pinned),
            **self._extra_state(),
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        capacity_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> Self:
        """Rebuild a policy from `to_state()`; may exceed a smaller capacity (see `victims(0)`).

        Raises:
            BadInput: the state is malformed or was written by another policy.
        """
        try:
            if state["policy"] != cls.name or state["version"] != STATE_VERSION:
                raise BadInput(
                    f"state is for policy {state['policy']!r} v{state['version']}, not {cls.name!r} v{STATE_VERSION}"
                )
            policy = cls(capacity_bytes, clock=clock, **cls._options_from_state(state))
            policy._capacity = max(capacity_bytes, sum(int(b[1]) for b in state["blocks"]))
            for block_id, size, models, value in state["blocks"]:
                policy.insert(str(block_id), int(size), models=[str(m) for m in models])
                policy._restore_value(str(block_id), value)
            policy._capacity = capacity_bytes
            policy.pin(str(b) for b in state["pinned"])
            policy._restore_extra(state)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, BadInput):
                raise
            raise BadInput(f"malformed {cls.name} policy state: {e!r}") from e
        return policy

    # Hooks for subclasses.
    def _on_insert(self, block_id: str) -> None:
        raise NotImplementedError

    def _on_touch(self, block_id: str) -> None:
        raise NotImplementedError

    def _on_remove(self, block_id: str) -> None:
        raise NotImplementedError

    def _on_clear(self) -> None:
        raise NotImplementedError

    def _worst_first(self) -> Generator[str, None, None]:
        raise NotImplementedError

    def _on_request(self, model: str, weight: float) -> None:
        return None

    def _on_models_changed(self, block_id: str) -> None:
        return None

    def _state_value(self, block_id: str) -> float | None:
        return None

    def _restore_value(self, block_id: str, value: Any) -> None:
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _options_from_state(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def _restore_extra(self, state: Mapping[str, Any]) -> None:
        return None

    # Sharing index.
    def _add_models(self, block_id: str, models: Iterable[str]) -> None:
        new = [m for m in models if m not in self._models[block_id]]
        for model in new:
            self._link(block_id, model)
        if new:
            self._on_models_changed(block_id)

    def _link(self, block_id: str, model: str) -> None:
        self._models[block_id][model] = None
        self._blocks_of.setdefault(model, {})[block_id] = None

    def _unlink_model(self, block_id: str, model: str) -> None:
        blocks = self._blocks_of.get(model)
        if blocks is not None:
            blocks.pop(block_id, None)
            if not blocks:
                del self._blocks_of[model]


class LRUPolicy(_BlockPolicy):
    """Evicts the least recently used block first; an insert or a hit makes a block most recent.

    Value of block b: the time of its last insert or hit. Same decisions as libCacheSim's LRU.
    """

    name = "lru"

    def __init__(self, capacity_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity_bytes, clock=clock)
        self._order: OrderedDict[str, None] = OrderedDict()

    def _on_insert(self, block_id: str) -> None:
        self._order[block_id] = None

    def _on_touch(self, block_id: str) -> None:
        self._order.move_to_end(block_id)

    def _on_remove(self, block_id: str) -> None:
        del self._order[block_id]

    def _on_clear(self) -> None:
        self._order.clear()

    def _worst_first(self) -> Generator[str, None, None]:
        yield from self._order


class SharingLRUPolicy(LRUPolicy):
    """LRU where a block's recency is the most recent use by any model that uses it.

    Value of block b: max(last insert or hit of b, max over m in models(b) of the last
    `record_request(m)`). A request for one LoRA variant therefore refreshes the shared
    backbone even when the device already holds the backbone and fetches only its adapter.
    """

    name = "sharing-lru"

    def _on_request(self, model: str, weight: float) -> None:
        for block_id in self._blocks_of.get(model, ()):
            self._order.move_to_end(block_id)


class _LazyHeap:
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


class LFUPolicy(_BlockPolicy):
    """Evicts the least frequently used block first, ties broken by least recent use.

    Value of block b: the number of inserts and hits since b was last inserted (no decay,
    forgotten on eviction). Same decisions as libCacheSim's LFU, which also breaks ties by LRU.
    """

    name = "lfu"

    def __init__(self, capacity_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity_bytes, clock=clock)
        self._freq: dict[str, int] = {}
        self._heap = _LazyHeap()

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


class SharingLFUPolicy(_BlockPolicy):
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
        self._heap = _LazyHeap()

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
        if exponent > _REBASE_EXPONENT:
            self._rebase(now, exponent)
            exponent = 0.0
        return float(2.0**exponent)

    def _rebase(self, now: float, exponent: float) -> None:
        factor = 2.0**-exponent
        self._epoch = now
        self._own = {b: v * factor for b, v in self._own.items()}
        self._demand = {
            m: d * factor for m, d in self._demand.items() if m in self._blocks_of or d * factor > _FORGET_DEMAND
        }
        # re-push in the old tie order so that equal values keep their ranking
        order = list(self._heap.worst_first())
        self._heap.clear()
        for block_id in order:
            self._score[block_id] *= factor
            self._push(block_id)


POLICIES: Final[dict[str, type[_BlockPolicy]]] = {
    cls.name: cls for cls in (LRUPolicy, LFUPolicy, SharingLRUPolicy, SharingLFUPolicy)
}


def make_policy(
    name: str,
    *,
    capacity_bytes: int,
    clock: Callable[[], float] = time.monotonic,
    half_life_s: float | None = None,
) -> ReplacementPolicy:
    """Build the policy registered under `name` ("lru", "lfu", "sharing-lru", "sharing-lfu").

    Raises:
        BadInput: an unknown name, a bad capacity, or `half_life_s` for a policy without decay.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise BadInput(
            f"unknown replacement policy {name!r}; choose one of {', '.join(sorted(POLICIES))}",
            policy=name,
        )
    if half_life_s is None:
        return cls(capacity_bytes, clock=clock)
    if not issubclass(cls, SharingLFUPolicy):
        raise BadInput(f"policy {name!r} does not decay; drop half_life_s", policy=name)
    return cls(capacity_bytes, clock=clock, half_life_s=half_life_s)


def serve_request(
    policy: ReplacementPolicy,
    model: str,
    blocks: Mapping[str, int],
    *,
    granularity: Literal["block", "model"] = "block",
    users: Mapping[str, Iterable[str]] | None = None,
) -> AccessInfo:
    """Serve one model request through a policy: count demand, hit or fetch and admit each object.

    `blocks` maps the block ids the request reads to their sizes, in reading order; `users`
    maps a block id to every model known (from manifests) to use it, declared when the block is
    stored (default: the requesting model only). At granularity "model" the whole model is one
    object named `model` whose size is the sum of its blocks (no sharing: every model stores its
    own copy of a backbone). A missed object is stored after evicting victims, or bypassed when
    it is not admitted or pins leave no room.
    """
    objects = {model: sum(blocks.values())} if granularity == "model" else blocks
    policy.record_request(model)
    hits = misses = hit_bytes = miss_bytes = 0
    evicted: list[str] = []
    bypassed: list[str] = []
    for object_id, size in objects.items():
        if object_id in policy:
            hits += 1
            hit_bytes += size
            policy.touch(object_id, model=model)
            continue
        misses += 1
        miss_bytes += size
        if not policy.admit(object_id, size):
            bypassed.append(object_id)
            continue
        try:
            evicted.extend(policy.evict(size))
        except CapacityExceeded:
            bypassed.append(object_id)
            continue
        known = users.get(object_id, ()) if users is not None and granularity == "block" else ()
        policy.insert(object_id, size, models=(model, *known))
    return AccessInfo(
        model=model,
        hits=hits,
        misses=misses,
        hit_bytes=hit_bytes,
        miss_bytes=miss_bytes,
        evicted=tuple(evicted),
        bypassed=tuple(bypassed),
    )
