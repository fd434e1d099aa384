"""Admission control for expensive requests (knowledge queries): a bounded queue and threads of their own.

At most `concurrency` requests run and `queue` wait; beyond that a request is refused at
once with `Overloaded` (503 + Retry-After) instead of piling up. Their heavy steps (model
load, embedding, search) run in the gate's own threads, never in the pool that serves
blocks, so a burst of queries cannot slow block serving down.
"""

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Final, ParamSpec, TypeVar

from cachenet.errors import Overloaded

__all__ = ("DEFAULT_QUERY_CONCURRENCY", "DEFAULT_QUERY_QUEUE", "WorkGate")

DEFAULT_QUERY_CONCURRENCY: Final = 2
DEFAULT_QUERY_QUEUE: Final = 16
_RETRY_AFTER_S: Final = 2.0
P = ParamSpec("P")
T = TypeVar("T")


class WorkGate:
    """A limit on concurrent expensive requests, with a bounded wait queue and its own threads."""

    def __init__(
        self, name: str, *, concurrency: int = DEFAULT_QUERY_CONCURRENCY, queue: int = DEFAULT_QUERY_QUEUE
    ) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError(f"concurrency must be >= 1 and queue >= 0, got {concurrency}, {queue}")
        self.name, self.concurrency, self.queue = name, concurrency, queue
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"cachenet-{name}")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run the body as one admitted request; raises `Overloaded` when the queue is full."""
        if self._admitted >= self.concurrency + self.queue:
            raise Overloaded(
                f"{self._admitted} {self.name} requests are running or waiting; retry later",
                retry_after_s=_RETRY_AFTER_S,
            )
        self._admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self._admitted -= 1

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the gate's threads (not the loop's default pool)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the threads (running work finishes)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
