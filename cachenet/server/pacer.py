"""A token bucket that paces a server's sending rate (to emulate a wireless or backhaul link)."""

import asyncio
import time
from collections.abc import Callable
from typing import Final

__all__ = ("TokenBucket",)

_BURST_S: Final = 0.05


class TokenBucket:
    """Await `pace(n)` before sending n bytes: the long-run rate never exceeds `rate_bytes_per_s`."""

    def __init__(self, rate_bytes_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_bytes_per_s}")
        self.rate = rate_bytes_per_s
        self._clock = clock
        self._burst = max(64 * 1024.0, rate_bytes_per_s * _BURST_S)
        self._tokens = self._burst
        self._last = clock()
        self._lock = asyncio.Lock()

    async def pace(self, nbytes: int) -> None:
        """Wait until `nbytes` may be sent (all senders share the one rate)."""
        async with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)

    __call__ = pace
