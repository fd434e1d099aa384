"""Bundle-aware replacement: a model is a hit only when all its blocks are held, so blocks are kept
for the models they complete.

A *bundle* is the set of blocks one request reads (a model, or the adapter part of a LoRA
model for a device that holds its base), with its byte size S(m), the bytes M(m) of it not
held, and its demand D(m) (requests decayed with a half-life, as in sharing-LFU). A bundle
*fits* when S(m) <= capacity; one that cannot fit can never be a hit and is worth nothing.

- Value of a block b, held or not: V(b) = sum over fitting bundles m that use b of
  D(m) / (S(m) + M(m)): demand per byte of the space the bundle takes, discounted by the bytes
  still missing to complete it. A complete bundle is worth D/S per byte, a half-held one less
  (its blocks serve nobody yet), so a model whose other half keeps being evicted goes as a
  whole, and a nearly complete model is preferred to one barely started. A model that cannot
  fit contributes nothing.
- A missing block with V(b) > 0 is admitted when the victims it needs are all worth less; the
  blocks of the bundle being served are never its own victims. (Discounting by S + M rather
  than by M alone keeps two models that cannot both fit from evicting each other in turn: the
  one being re-completed never looks denser than the complete one it would break.)
- Byte hits: with `byte_weight` w (default), every block also earns w * F(b) / B, where F(b)
  is the summed demand of every bundle using b (fitting or not) and B the decayed mean bytes
  per request: the byte-hit-ratio gain per byte of keeping b, next to the model-hit-ratio
  gain per byte D/S, so the policy maximises model hit ratio + w * byte hit ratio. Part of a
  model too large to be held whole then still saves backhaul bytes, but only in room no
  completable model is worth more. With `byte_weight=None` (strict), a block of known models
  none of which can fit is never admitted.
- A block worth nothing (no known bundle) is admitted only over blocks worth nothing.
- Victims: by increasing V(b); ties by decayed own use, then age.

Ranking is recomputed with numpy when asked (bundle x block incidence), so a request costs
O(blocks it reads x bundles per block) and a victim choice O(held blocks + incidence).
The state is bounded: at most `max_bundles` bundles (the least demanded are forgotten).
"""

import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final

import numpy as np

from cachenet.errors import BadInput
from placement.replacement.base import DEFAULT_HALF_LIFE_S, REBASE_EXPONENT, BlockPolicy

__all__ = ("BundlePolicy", "DEFAULT_BYTE_WEIGHT", "MAX_BUNDLES")

MAX_BUNDLES: Final = 4096
DEFAULT_BYTE_WEIGHT: Final = 0.03
MAX_BUNDLE_BLOCKS: Final = 100_000


class BundlePolicy(BlockPolicy):
    """Keeps the blocks of the models they complete; see the module docstring for the values."""

    name = "bundle"
    _idx: dict[str, int]
    _ids: list[str]
    _size: np.ndarray
    _held: np.ndarray
    _own: np.ndarray
    _age: np.ndarray
    _block_bundles: list[list[int]]
    _bundle_keys: list[str]
    _bundle_model: list[str]
    _bundle_slot: dict[str, int]
    _bundle_blocks: list[np.ndarray]
    _latest: dict[str, str]
    _S: np.ndarray
    _M: np.ndarray
    _D: np.ndarray
    _csr: tuple[np.ndarray, np.ndarray] | None
    _cached: tuple[np.ndarray, np.ndarray] | None
    _order_cache: np.ndarray | None
    _admit_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    def __init__(
        self,
        capacity_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        byte_weight: float | None = DEFAULT_BYTE_WEIGHT,
        max_bundles: int = MAX_BUNDLES,
    ) -> None:
        if not half_life_s > 0.0:
            raise BadInput(f"half_life_s must be > 0, got {half_life_s!r}")
        if max_bundles < 1:
            raise BadInput(f"max_bundles must be >= 1, got {max_bundles!r}")
        super().__init__(capacity_bytes, clock=clock)
        self.half_life_s = half_life_s
        if byte_weight is not None and not byte_weight >= 0.0:
            raise BadInput(f"byte_weight must be >= 0 or None, got {byte_weight!r}")
        self.byte_weight = byte_weight
        self._req_bytes = 0.0
        self._req_weight = 0.0
        self.max_bundles = max_bundles
        self._epoch = clock()
        self._seq = 0
        self._reset_index()

    # -- public -------------------------------------------------------------------------

    def declare(self, model: str, blocks: Mapping[str, int]) -> str:
        """Make the bundle of `model` reading exactly `blocks` (id → size) known; returns its key."""
        if len(blocks) > MAX_BUNDLE_BLOCKS:
            raise BadInput(f"a bundle of {len(blocks)} blocks is over the limit {MAX_BUNDLE_BLOCKS}", model=model)
        key = _bundle_key(model, blocks)
        if key in self._bundle_slot:
            self._latest[model] = key
            return key
        if len(self._bundle_slot) >= self.max_bundles:
            self._forget_bundles()
        j = len(self._bundle_keys)
        for block_id, size in blocks.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadInput(f"block size must be an int >= 0, got {size!r}", block_id=block_id)
        slots = np.array([self._slot(b, s) for b, s in blocks.items()], dtype=np.int64)
        for k in slots.tolist():
            self._block_bundles[k].append(j)
        self._bundle_keys.append(key)
        self._bundle_model.append(model)
        self._bundle_slot[key] = j
        self._bundle_blocks.append(slots)
        total = float(self._size[slots].sum())
        held = float(self._size[slots][self._held[slots]].sum())
        if j == len(self._S):
            self._S, self._M, self._D = _grow(self._S), _grow(self._M), _grow(self._D)
        self._S[j], self._M[j], self._D[j] = total, total - held, 0.0
        self._latest[model] = key
        self._csr = None
        self._cached = None
        return key

    def demand(self, model: str) -> float:
        """D of the latest bundle of `model` at the current time (0.0 if unknown)."""
        key = self._latest.get(model)
        if key is None:
            return 0.0
        return float(self._D[self._bundle_slot[key]]) * self._decay_since_epoch()

    def value(self, block_id: str) -> float:
        """V(b) at the current time, held or not (0.0 for a block of no known bundle)."""
        k = self._idx.get(block_id)
        if k is None:
            return 0.0
        return float(self._values()[0][k]) * self._decay_since_epoch()

    def admit(self, block_id: str, size: int) -> bool:
        """Whether to store a missing block: see the module docstring."""
        if not 0 <= size <= self._capacity:
            return False
        k = self._idx.get(block_id)
        keep = self._values()[0]
        gain = float(keep[k]) if k is not None else 0.0
        if gain <= 0.0 and k is not None and self.byte_weight is None and self._block_bundles[k]:
            return False  # strict: every model using it is too large to be held whole
        excess = self._used + size - self._capacity
        if excess <= 0:
            return True
        csum, worst, shielded = self._admission_table()
        reach = int(np.searchsorted(csum, excess))
        if reach >= len(csum) or shielded[reach]:
            return False
        return bool(worst[reach] < gain) if gain > 0.0 else bool(worst[reach] <= 0.0)

    def pin(self, block_ids: Iterable[str]) -> None:
        """Protect blocks from eviction."""
        super().pin(block_ids)
        self._admit_cache = None

    def unpin(self, block_ids: Iterable[str]) -> None:
        """Make blocks evictable again."""
        super().unpin(block_ids)
        self._admit_cache = None

    # -- hooks --------------------------------------------------------------------------

    def _on_insert(self, block_id: str) -> None:
        k = self._slot(block_id, self._sizes[block_id])
        self._held[k] = True
        self._own[k] = self._weight_now()
        self._seq += 1
        self._age[k] = self._seq
        self._shift_missing(k, -1)

    def _on_touch(self, block_id: str) -> None:
        k = self._idx[block_id]
        self._own[k] += self._weight_now()
        self._order_cache = None

    def _on_remove(self, block_id: str) -> None:
        k = self._idx[block_id]
        self._held[k] = False
        self._own[k] = 0.0
        self._shift_missing(k, +1)

    def _on_clear(self) -> None:
        self._epoch = self._clock()
        self._req_bytes = self._req_weight = 0.0
        self._reset_index()

    def _on_request(self, model: str, weight: float) -> None:
        key = self._latest.get(model)
        if key is not None:
            self._add_demand(key, weight)

    def _on_bundle(self, model: str, weight: float, blocks: Mapping[str, int]) -> None:
        key = self.declare(model, blocks)
        self._add_demand(key, weight)
        w = weight * self._weight_now()
        self._req_weight += w
        self._req_bytes += w * float(self._S[self._bundle_slot[key]])

    def _worst_first(self) -> Generator[str, None, None]:
        for v in self._ranking()[2].tolist():
            yield self._ids[v]

    def _state_value(self, block_id: str) -> float | None:
        return float(self._own[self._idx[block_id]]) * self._decay_since_epoch()

    def _restore_value(self, block_id: str, value: Any) -> None:
        self._own[self._idx[block_id]] = float(value) * self._weight_now()
        self._cached = None

    def _extra_state(self) -> dict[str, Any]:
        decay = self._decay_since_epoch()
        return {
            "half_life_s": self.half_life_s,
            "byte_weight": self.byte_weight,
            "request_bytes": [self._req_bytes * decay, self._req_weight * decay],
            "bundles": [
                [self._bundle_model[j], self._blocks_of_bundle(j), float(self._D[j]) * decay]
                for j in range(len(self._bundle_keys))
            ],
        }

    @classmethod
    def _options_from_state(cls, state: Mapping[str, Any]) -> dict[str, Any]:
        weight = state["byte_weight"]
        return {"half_life_s": float(state["half_life_s"]), "byte_weight": None if weight is None else float(weight)}

    def _restore_extra(self, state: Mapping[str, Any]) -> None:
        w = self._weight_now()
        self._req_bytes, self._req_weight = (float(x) * w for x in state["request_bytes"])
        for model, blocks, demand in state["bundles"][-self.max_bundles :]:
            key = self.declare(str(model), {str(b): int(s) for b, s in blocks.items()})
            self._D[self._bundle_slot[key]] = float(demand) * w
        self._cached = None

    # -- internals ----------------------------------------------------------------------

    def _reset_index(self) -> None:
        self._idx = {}
        self._ids = []
        self._size = np.zeros(16, dtype=np.int64)
        self._held = np.zeros(16, dtype=bool)
        self._own = np.zeros(16, dtype=np.float64)
        self._age = np.zeros(16, dtype=np.int64)
        self._block_bundles = []
        self._bundle_keys = []
        self._bundle_model = []
        self._bundle_slot = {}
        self._bundle_blocks = []
        self._latest = {}
        self._S = np.zeros(16, dtype=np.float64)
        self._M = np.zeros(16, dtype=np.float64)
        self._D = np.zeros(16, dtype=np.float64)
        self._csr = None
        self._protected = -1
        self._cached = None
        self._order_cache = None
        self._admit_cache = None

    def _slot(self, block_id: str, size: int) -> int:
        k = self._idx.get(block_id)
        if k is not None:
            return k
        k = len(self._ids)
        if k == len(self._size):
            self._size, self._held = _grow(self._size), _grow(self._held)
            self._own, self._age = _grow(self._own), _grow(self._age)
        self._idx[block_id] = k
        self._ids.append(block_id)
        self._block_bundles.append([])
        self._size[k] = size
        self._csr = None
        self._cached = None
        return k

    def _shift_missing(self, k: int, sign: int) -> None:
        size = float(self._size[k])
        for j in self._block_bundles[k]:
            self._M[j] += sign * size
        self._cached = None

    def _add_demand(self, key: str, weight: float) -> None:
        j = self._bundle_slot[key]
        self._D[j] += weight * self._weight_now()
        self._protected = j
        self._cached = None

    def _values(self) -> tuple[np.ndarray, np.ndarray]:
        """V per block slot and the protected mask (cached until a value changes)."""
        if self._cached is None:
            n, nb = len(self._bundle_keys), len(self._ids)
            demand, total = self._D[:n], self._S[:n]
            fits = (total <= self._capacity) & (demand > 0.0)
            rho = np.where(fits, demand / np.maximum(total + self._M[:n], 1.0), 0.0)
            owner, bundles = self._incidence()
            keep = np.bincount(owner, weights=rho[bundles], minlength=nb)
            if self.byte_weight and self._req_weight > 0.0:
                per_byte = self.byte_weight * self._req_weight / max(self._req_bytes, 1.0)
                keep = keep + per_byte * np.bincount(owner, weights=demand[bundles], minlength=nb)
            protected = np.zeros(nb, dtype=bool)
            if 0 <= self._protected < n:
                protected[self._bundle_blocks[self._protected]] = True
            self._cached = (keep, protected)
            self._order_cache = None
            self._admit_cache = None
        return self._cached

    def _ranking(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """V, the protected mask, and held slots worst first (reordered after hits too)."""
        keep, protected = self._values()
        if self._order_cache is None:
            held = np.flatnonzero(self._held[: len(self._ids)])
            order = np.lexsort((self._age[held], self._own[held], keep[held], protected[held]))
            self._order_cache = held[order]
        return keep, protected, self._order_cache

    def _admission_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Along the unpinned held blocks worst first: bytes freed, the highest V evicted, and
        whether a protected block is among them. Kept across hits (a hit only reorders ties)."""
        self._values()
        if self._admit_cache is None:
            keep, protected, order = self._ranking()
            if self._pinned:
                pinned = np.fromiter((self._ids[v] in self._pinned for v in order.tolist()), bool, len(order))
                order = order[~pinned]
            self._admit_cache = (
                np.cumsum(self._size[order]),
                np.maximum.accumulate(keep[order]) if len(order) else keep[order],
                np.logical_or.accumulate(protected[order]) if len(order) else protected[order],
            )
        return self._admit_cache

    def _incidence(self) -> tuple[np.ndarray, np.ndarray]:
        if self._csr is None:
            counts = np.array([len(b) for b in self._block_bundles], dtype=np.int64)
            owner = np.repeat(np.arange(len(self._block_bundles), dtype=np.int64), counts)
            flat = [j for b in self._block_bundles for j in b]
            self._csr = (owner, np.array(flat, dtype=np.int64))
        return self._csr

    def _forget_bundles(self) -> None:
        """Drop the least demanded half of the bundles and rebuild the index over what is left."""
        n = len(self._bundle_keys)
        keepers = sorted(np.argsort(-self._D[:n], kind="stable")[: max(1, self.max_bundles // 2)].tolist())
        bundles = [
            (
                self._bundle_model[j],
                {self._ids[k]: int(self._size[k]) for k in self._bundle_blocks[j].tolist()},
                self._D[j],
            )
            for j in keepers
        ]
        held = [
            (self._ids[k], int(self._size[k]), float(self._own[k]), int(self._age[k]))
            for k in np.flatnonzero(self._held[: len(self._ids)]).tolist()
        ]
        latest = dict(self._latest)
        self._reset_index()
        for block_id, size, own, age in held:
            k = self._slot(block_id, size)
            self._held[k], self._own[k], self._age[k] = True, own, age
        for model, blocks, demand in bundles:
            key = self.declare(model, blocks)
            self._D[self._bundle_slot[key]] = demand
        self._latest = {m: key for m, key in latest.items() if key in self._bundle_slot}

    def _blocks_of_bundle(self, j: int) -> dict[str, int]:
        return {self._ids[k]: int(self._size[k]) for k in self._bundle_blocks[j].tolist()}

    def _decay_since_epoch(self) -> float:
        return float(2.0 ** (-(self._clock() - self._epoch) / self.half_life_s))

    def _weight_now(self) -> float:
        now = self._clock()
        exponent = (now - self._epoch) / self.half_life_s
        if exponent > REBASE_EXPONENT:
            factor = 2.0**-exponent
            self._epoch = now
            self._own *= factor
            self._D *= factor
            self._req_bytes *= factor
            self._req_weight *= factor
            self._cached = None
            exponent = 0.0
        return float(2.0**exponent)


def _bundle_key(model: str, blocks: Mapping[str, int]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for block_id in sorted(blocks):
        digest.update(block_id.encode())
        digest.update(b"\0")
    return f"{model}#{digest.hexdigest()}"


def _grow(array: np.ndarray) -> np.ndarray:
    """The array with twice the room (amortised O(1) appends)."""
    return np.concatenate([array, np.zeros_like(array)])
