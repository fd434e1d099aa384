"""What a node holds, as a numbered log of changes the controller reads incrementally (issue #22).

Every block that enters the store is logged as added once it is complete and verified; a block
leaving it (evicted, quarantined) is logged as removed *before* it is deleted, so the controller's
lookup table never learns of a block before it can be served. The log keeps the last
`max_changes` changes; a reader further behind (or of an earlier process: another `epoch`) gets
the whole holding instead.
"""

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ("DEFAULT_MAX_CHANGES", "HoldingsLog")

DEFAULT_MAX_CHANGES: Final = 65_536


class HoldingsLog:
    """A bounded log of (seq, block id, held) changes over the node's block store."""

    def __init__(self, held: Callable[[], Iterable[str]], *, max_changes: int = DEFAULT_MAX_CHANGES) -> None:
        self.epoch = uuid.uuid4().hex[:16]
        self.seq = 0
        self._held = held
        self._changes: deque[tuple[int, str, bool]] = deque(maxlen=max_changes)

    def added(self, block_id: str) -> None:
        """`block_id` is held now (complete and verified)."""
        self._log(block_id, True)

    def removed(self, block_id: str) -> None:
        """`block_id` is about to leave the store."""
        self._log(block_id, False)

    def since(self, epoch: str | None, seq: int | None) -> tuple[bool, list[str], list[str]]:
        """(full, added, removed) after `seq` of `epoch`; full: `added` is everything held now."""
        oldest = self._changes[0][0] if self._changes else self.seq + 1
        if epoch != self.epoch or seq is None or seq > self.seq or seq + 1 < oldest:
            return True, sorted(self._held()), []
        net: dict[str, bool] = {}
        for n, block_id, held in reversed(self._changes):
            if n <= seq:
                break
            net.setdefault(block_id, held)
        return False, sorted(b for b, h in net.items() if h), sorted(b for b, h in net.items() if not h)

    def _log(self, block_id: str, held: bool) -> None:
        self.seq += 1
        self._changes.append((self.seq, block_id, held))
