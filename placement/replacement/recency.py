"""Recency policies: LRU, and LRU where a model request refreshes every block it uses."""

import time
from collections import OrderedDict
from collections.abc import Callable, Generator

from placement.replacement.base import BlockPolicy

__all__ = ("LRUPolicy", "SharingLRUPolicy")


class LRUPolicy(BlockPolicy):
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
