"""The replacement policies' contract and the bookkeeping every block policy shares.

Pure, no I/O: the edge node and the controller's simulator both drive the policies.
Ids are opaque strings (block ids at block granularity, model names at model granularity).
"""

import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, ClassVar, Final, Protocol, Self

from cachenet.errors import BadInput, CapacityExceeded

__all__ = (
    "BlockPolicy",
    "DEFAULT_HALF_LIFE_S",
    "FORGET_DEMAND",
    "REBASE_EXPONENT",
    "ReplacementPolicy",
    "STATE_VERSION",
)

DEFAULT_HALF_LIFE_S: Final = 600.0
STATE_VERSION: Final = 1
# Scaled scores grow as 2**(elapsed / half-life); rebase them long before a float overflows.
REBASE_EXPONENT: Final = 256.0
FORGET_DEMAND: Final = 1e-12


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
    def record_request(self, model: str, *, weight: float = 1.0, blocks: Mapping[str, int] | None = None) -> None: ...
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


class BlockPolicy:
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

    def record_request(self, model: str, *, weight: float = 1.0, blocks: Mapping[str, int] | None = None) -> None:
        """Record model-level demand (sharing-aware policies use it; plain ones ignore it).

        `blocks` (id → size) are the blocks this request reads, when known: the bundle policy
        keys demand by them; the others use the model name only.
        """
        if not weight >= 0.0:
            raise BadInput(f"request weight must be >= 0, got {weight!r}", model=model)
        if blocks is None:
            self._on_request(model, weight)
        else:
            self._on_bundle(model, weight, blocks)

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

    def _on_bundle(self, model: str, weight: float, blocks: Mapping[str, int]) -> None:
        self._on_request(model, weight)

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
