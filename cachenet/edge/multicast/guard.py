"""What keeps multicast from being turned against the node: joins limited per client address,
and losses counted by ranges (never piece by piece) so a NACK's cost is bounded by its length.
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cachenet.errors import BadInput, TooManyRequests
from cachenet.protocol.multicast import MAX_NACK_RANGES

__all__ = (
    "JOIN_BURST",
    "JOIN_RATE_PER_S",
    "JoinLimiter",
    "MAX_NACK_RANGES",
    "merge_report",
    "repeated_pieces",
)

# A client address may join this many times at once, then this many times per second.
JOIN_BURST: Final = 8
JOIN_RATE_PER_S: Final = 1.0
# Addresses remembered at most (the least recently seen are forgotten first).
MAX_TRACKED_ADDRESSES: Final = 4096
# Ranges one NACK may list: a device with more losses gets the rest by unicast repair.


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class JoinLimiter:
    """A token bucket per client address; the table is capped and idle addresses age out."""

    def __init__(
        self,
        *,
        burst: int = JOIN_BURST,
        rate_per_s: float = JOIN_RATE_PER_S,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.rate, self.max_addresses = float(burst), rate_per_s, max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, address: str) -> None:
        """Take one join from `address`'s bucket; raises `TooManyRequests` when it is empty."""
        now = self._clock()
        b = self._buckets.pop(address, None)
        if b is None:
            b = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        self._buckets[address] = b  # most recent last
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        if b.tokens < 1.0:
            wait = (1.0 - b.tokens) / self.rate
            raise TooManyRequests(
                f"{address} joins too often ({self.burst:g} at once, {self.rate:g}/s); retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        b.tokens -= 1.0

    def __len__(self) -> int:
        return len(self._buckets)


def merge_report(entries: Sequence[object], piece_counts: Sequence[int]) -> list[tuple[int, int, int]]:
    """Validate one member's [[block seq, first piece, end piece], ...] and merge overlaps.

    Cost is O(n log n) in the entries (at most `MAX_NACK_RANGES`), never in the pieces named.
    """
    if len(entries) > MAX_NACK_RANGES:
        raise BadInput(f"a NACK lists at most {MAX_NACK_RANGES} ranges, got {len(entries)}")
    ranges: list[tuple[int, int, int]] = []
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 3 or not all(type(x) is int for x in entry):
            raise BadInput("each missing entry is [block seq, first piece, end piece]")
        seq, lo, hi = entry
        if not 0 <= seq < len(piece_counts):
            raise BadInput(f"block seq {seq} is not in this session")
        if not 0 <= lo < hi <= piece_counts[seq]:
            raise BadInput(f"pieces [{lo}, {hi}) are outside block {seq}'s {piece_counts[seq]} pieces")
        ranges.append((seq, lo, hi))
    ranges.sort()
    merged: list[tuple[int, int, int]] = []
    for seq, lo, hi in ranges:
        if merged and merged[-1][0] == seq and lo <= merged[-1][2]:
            last = merged[-1]
            merged[-1] = (seq, last[1], max(last[2], hi))
        else:
            merged.append((seq, lo, hi))
    return merged


def repeated_pieces(reports: Iterable[list[tuple[int, int, int]]], *, at_least: int = 2) -> dict[int, list[int]]:
    """The pieces lacked by `at_least` members (each report merged), by a sweep over range ends.

    O(R log R) in the ranges plus the pieces returned (at most the session's pieces).
    """
    events: dict[int, list[tuple[int, int]]] = {}
    for report in reports:
        for seq, lo, hi in report:
            events.setdefault(seq, []).extend(((lo, 1), (hi, -1)))
    out: dict[int, list[int]] = {}
    for seq, ev in events.items():
        ev.sort()
        depth, prev = 0, 0
        for pos, delta in ev:
            if depth >= at_least and pos > prev:
                out.setdefault(seq, []).extend(range(prev, pos))
            depth += delta
            prev = pos
    return out
