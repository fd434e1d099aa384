"""One upstream transfer of a block, shared by every requester that wants it (single flight).

The bytes land in a file (the store's temporary file when the block is admitted, a spool
file when it is not) while they are hashed. Requesters of a large block read that file as
it grows (cut-through); the others wait for the verified block. When the transfer fails
or the bytes do not verify, every reader is told and aborts: a wrong block is never
stored, and a device never receives a complete body that does not match its hashes.
"""

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from cachenet.errors import UpstreamUnavailable

__all__ = ("Flight",)

_READ_BYTES: Final = 1024 * 1024


class Flight:
    """The state of one block being fetched: where its bytes go and how far they got."""

    def __init__(self, block_id: str, *, size: int | None, blake3: str | None) -> None:
        self.block_id = block_id
        self.size: int = size or 0
        self.blake3 = blake3
        self.path: Path | None = None
        self.written = 0
        self.attempt = 0
        self.done = False
        self.error: BaseException | None = None
        self.final_path: Path | None = None
        self.stored = True
        self.trusted = False
        self._changed = asyncio.Condition()
        self._started = asyncio.Event()

    # -- writer side ---------------------------------------------------------------------

    async def begin_attempt(self, path: Path, size: int, *, trusted: bool) -> None:
        """A new transfer starts writing into `path` (readers of a failed attempt abort).

        Only a `trusted` source (the origin) may be streamed before verification: a peer's
        bytes are verified whole first, so a lying peer costs time, never a broken download.
        """
        async with self._changed:
            self.attempt += 1
            self.trusted = trusted
            self.path, self.size, self.written = path, size, 0
            self._started.set()
            self._changed.notify_all()

    async def progress(self, written: int) -> None:
        """`written` bytes of the current attempt are in the file."""
        async with self._changed:
            self.written = written
            self._changed.notify_all()

    async def finish(self, final_path: Path | None, error: BaseException | None) -> None:
        """The transfer ended: verified at `final_path`, or failed with `error`."""
        async with self._changed:
            self.done, self.final_path, self.error = True, final_path, error
            self._started.set()
            self._changed.notify_all()

    # -- reader side ---------------------------------------------------------------------

    async def wait(self) -> Path:
        """Wait for the verified block; returns its path or raises the transfer's error."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.done)
        if self.error is not None:
            raise self.error
        assert self.final_path is not None
        return self.final_path

    async def wait_started(self) -> None:
        """Wait until the size is known (or the transfer failed)."""
        await self._started.wait()
        if self.done and self.error is not None:
            raise self.error

    async def _wait_verified(self, attempt: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.done or self.attempt != attempt)
            if self.attempt != attempt or self.error is not None:
                raise self.error or UpstreamUnavailable(f"block {self.block_id}: transfer restarted")

    def _moved_past(self, position: int, attempt: int) -> bool:
        return self.written > position or self.done or self.attempt != attempt

    async def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) as they arrive; raise if the transfer fails or restarts."""
        attempt = self.attempt
        path = self.path
        if path is None:
            raise UpstreamUnavailable(f"block {self.block_id}: transfer has not started")
        try:
            fd = os.open(path, os.O_RDONLY)  # stays valid after the file is renamed or unlinked
        except FileNotFoundError:  # the attempt failed and its file went before we opened it
            raise UpstreamUnavailable(
                f"block {self.block_id}: upstream transfer failed", block_id=self.block_id
            ) from None
        try:
            position = start
            while position < end:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._moved_past, position, attempt))
                    if self.attempt != attempt or (self.done and self.error is not None):
                        raise self.error or UpstreamUnavailable(
                            f"block {self.block_id}: upstream transfer restarted", block_id=self.block_id
                        )
                    available = min(self.written, end)
                while position < available:
                    n = min(_READ_BYTES, available - position)
                    chunk = await asyncio.to_thread(os.pread, fd, n, position)
                    if not chunk:
                        raise UpstreamUnavailable(f"block {self.block_id}: spool file ended early")
                    if position + len(chunk) >= end:
                        # Hold back the last bytes until the block verified, so a block that
                        # fails verification never reaches a device as a complete body.
                        await self._wait_verified(attempt)
                    position += len(chunk)
                    yield chunk
        finally:
            os.close(fd)
