"""Writers that put one block into a `BlockStore`: streamed in order, or in pieces at offsets.

Both write a temporary file beside the block's final place, verify it against the block
id (XXH3-128), its BLAKE3 digest and size, fsync it (when the store does) and hand it to
the store, which renames it into place under its lock.
"""

import errno
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

from cachenet.blockid import BlockDigest, BlockHasher
from cachenet.errors import BlockCorrupt, CapacityExceeded

__all__ = ("BlockWriter", "PieceWriter", "WriterStore")

READ_CHUNK_BYTES: Final = 1024 * 1024


class WriterStore(Protocol):
    """What a writer needs of its store (`cachenet.blockstore.BlockStore`)."""

    @property
    def fsync(self) -> bool:
        """Whether blocks are fsynced before they are published."""
        ...

    def reserve(self, size: int) -> None:
        """Reserve room; raises `CapacityExceeded`."""
        ...

    def release(self, size: int) -> None:
        """Give back a reservation."""
        ...

    def temp_path(self, block_id: str) -> Path:
        """A fresh temporary file name beside the block's place."""
        ...

    def _commit(self, tmp: Path, digest: BlockDigest, reserved: int) -> bool: ...


class BlockWriter:
    """Streams one block into a temporary file, hashing as it goes; `commit` verifies and publishes it."""

    def __init__(
        self,
        store: "WriterStore",
        block_id: str,
        *,
        blake3: str | None,
        expected_size: int | None,
    ) -> None:
        self.store = store
        self.block_id = block_id
        self.blake3 = blake3
        self.expected_size = expected_size
        self._hasher = BlockHasher()
        self._reserved = 0
        if expected_size is not None:
            store.reserve(expected_size)
            self._reserved = expected_size
        self._tmp = store.temp_path(block_id)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._done = False

    @property
    def temp_path(self) -> Path:
        """The temporary file the block is being written to (readable while it grows)."""
        return self._tmp

    @property
    def written(self) -> int:
        """Bytes written so far."""
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append the next piece of the block."""
        if self.expected_size is not None and self._hasher.size + len(data) > self.expected_size:
            raise BlockCorrupt(
                f"block {self.block_id}: more bytes than the expected {self.expected_size}",
                block_id=self.block_id,
            )
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            if e.errno == errno.ENOSPC:
                raise CapacityExceeded(f"disk full while writing block {self.block_id}") from e
            raise
        self._hasher.update(data)

    def commit(self) -> bool:
        """Verify and publish the block; True when it was not stored before."""
        try:
            self._hasher.verify(self.block_id, self.blake3)
            if self.expected_size is not None and self._hasher.size != self.expected_size:
                raise BlockCorrupt(
                    f"block {self.block_id}: {self._hasher.size} bytes, expected {self.expected_size}",
                    block_id=self.block_id,
                )
            self._file.flush()
            if self.store.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            self.abort()
            if e.errno == errno.ENOSPC:
                raise CapacityExceeded(f"disk full while writing block {self.block_id}") from e
            raise
        except BaseException:
            self.abort()
            raise
        self._done = True
        reserved, self._reserved = self._reserved, 0
        try:
            return self.store._commit(self._tmp, self._hasher.digest(), reserved)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Discard the partial block."""
        if self._done:
            return
        self._done = True
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        if self._reserved:
            self.store.release(self._reserved)
            self._reserved = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class PieceWriter:
    """One block written at offsets in any order into a temporary file of its full size.

    `commit` reads the file back once, verifies it against the block id, BLAKE3 and size,
    and publishes it like `BlockWriter.commit`. Safe to use from several threads: writes,
    the commit and `abort` take turns, and nothing is written after a commit or an abort.
    """

    def __init__(self, store: "WriterStore", block_id: str, *, blake3: str | None, size: int) -> None:
        if size < 0:
            raise ValueError(f"negative block size {size}")
        self.store, self.block_id, self.blake3, self.size = store, block_id, blake3, size
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._committed = False
        store.reserve(size)
        self._reserved = size
        try:
            self._tmp = store.temp_path(block_id)
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(self._fd, size)
        except BaseException:
            self.abort()
            raise

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes of the block at `offset`."""
        if offset < 0 or offset + len(data) > self.size:
            raise BlockCorrupt(
                f"block {self.block_id}: bytes {offset}-{offset + len(data)} are outside its {self.size} bytes",
                block_id=self.block_id,
            )
        view = memoryview(data)
        with self._lock:
            if self._fd is None:
                raise ValueError(f"block {self.block_id}: the writer is closed")
            try:
                while view:
                    n = os.pwrite(self._fd, view, offset)
                    view, offset = view[n:], offset + n
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    self._abort()
                    raise CapacityExceeded(f"disk full while writing block {self.block_id}") from e
                raise

    def commit(self) -> bool:
        """Verify and publish the block; True when it was not stored before. Raises `BlockCorrupt`."""
        with self._lock:
            if self._fd is None:
                raise ValueError(f"block {self.block_id}: the writer is closed")
            try:
                hasher = BlockHasher()
                for offset in range(0, self.size, READ_CHUNK_BYTES):
                    hasher.update(os.pread(self._fd, min(READ_CHUNK_BYTES, self.size - offset), offset))
                hasher.verify(self.block_id, self.blake3)
                if hasher.size != self.size:
                    raise BlockCorrupt(
                        f"block {self.block_id}: {hasher.size} bytes, expected {self.size}", block_id=self.block_id
                    )
                if self.store.fsync:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            except BaseException:
                self._abort()
                raise
            reserved, self._reserved = self._reserved, 0
            self._committed = True
            try:
                return self.store._commit(self._tmp, hasher.digest(), reserved)
            finally:
                self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Discard the partial block (nothing happens after a commit)."""
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        tmp = getattr(self, "_tmp", None)
        if tmp is not None and not self._committed:
            tmp.unlink(missing_ok=True)
        if self._reserved:
            self.store.release(self._reserved)
            self._reserved = 0
