"""Content-addressed block store on local disk, with size accounting and an optional capacity.

Layout under the store's root:

    root/
    ├── .lock                                     shared flock held by every open store
    ├── blocks/
    │   └── 3f/
    │       └── a2/
    │           ├── 3fa2…(32 hex)                  a complete, verified block
    │           └── .3fa2….1c9e04d7.tmp            a write in progress (never served)
    └── quarantine/
        └── 3fa2….<unix-ns>                        a block that failed verification on read

A block becomes visible only by `os.replace` of a temporary file that was fully written,
fsynced and verified against the block id (XXH3-128) and, when given, its BLAKE3 digest.
The store is safe to use from several threads: the index and the byte accounting sit
behind one lock, and concurrent writers of the same block each write their own
temporary file (the second to commit discards its copy).
"""

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cachenet.blockid import BlockDigest, BlockHasher, digest_of, validate_block_id
from cachenet.blockwriters import BlockWriter, PieceWriter
from cachenet.errors import BlockCorrupt, BlockNotFound, CapacityExceeded

__all__ = ("BlockStore", "BlockWriter", "PieceWriter", "StoreReport")
log = logging.getLogger(__name__)

READ_CHUNK_BYTES: Final = 1024 * 1024
STALE_TEMP_S: Final = 3600.0
_TMP_SUFFIX: Final = ".tmp"


@dataclass(frozen=True, slots=True)
class StoreReport:
    """What `BlockStore.check` found: empty lists mean a healthy store."""

    blocks: int
    used_bytes: int
    orphan_temp_files: list[str] = field(default_factory=list)
    corrupt_blocks: list[str] = field(default_factory=list)
    size_drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not (self.orphan_temp_files or self.corrupt_blocks or self.size_drift)


class BlockStore:
    """Blocks on disk, named by their XXH3-128 id, never holding more than `capacity_bytes`."""

    def __init__(
        self,
        root: Path | str,
        *,
        capacity_bytes: int | None = None,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.fsync = fsync
        self._blocks_dir = self.root / "blocks"
        self._quarantine_dir = self.root / "quarantine"
        self._blocks_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._sizes: dict[str, int] = {}
        self._used = 0
        self._reserved = 0
        self._scan()

    def close(self) -> None:
        """Release the store's lock (the process exiting does the same)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading -------------------------------------------------------------------------

    def __contains__(self, block_id: object) -> bool:
        return isinstance(block_id, str) and block_id in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def has(self, block_id: str) -> bool:
        """True when the block is stored and complete."""
        return block_id in self._sizes

    @property
    def used_bytes(self) -> int:
        """Bytes held by complete blocks."""
        return self._used

    @property
    def free_bytes(self) -> int | None:
        """Bytes left under the capacity (None when unbounded), counting reservations."""
        if self.capacity_bytes is None:
            return None
        # Under the lock: `_commit` gives the reservation back before the rename and counts
        # the block after it, so an unlocked read could see the bytes in neither (too much free).
        with self._lock:
            return self.capacity_bytes - self._used - self._reserved

    def ids(self) -> list[str]:
        """Ids of every stored block (a snapshot)."""
        with self._lock:
            return list(self._sizes)

    def sizes(self) -> dict[str, int]:
        """Block id → size of every stored block (a snapshot)."""
        with self._lock:
            return dict(self._sizes)

    def size_of(self, block_id: str) -> int:
        """Size of a stored block; raises `BlockNotFound`."""
        try:
            return self._sizes[block_id]
        except KeyError:
            raise _not_found(block_id) from None

    def path(self, block_id: str) -> Path:
        """Path of a stored block's file; raises `BlockNotFound` (or `InvalidName`)."""
        validate_block_id(block_id)
        if block_id not in self._sizes:
            raise _not_found(block_id)
        return _block_path(self._blocks_dir, block_id)

    def read(self, block_id: str, *, verify: bool = False) -> bytes:
        """The whole block; with `verify`, a block that no longer hashes to its id is quarantined."""
        data = self.path(block_id).read_bytes()
        if verify and digest_of(data).block_id != block_id:
            self.quarantine(block_id)
            raise BlockCorrupt(f"block {block_id} is corrupt on disk; quarantined", block_id=block_id)
        return data

    def iter_chunks(self, block_id: str, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the block's bytes in [start, end) in chunks of at most READ_CHUNK_BYTES."""
        path = self.path(block_id)
        stop = self._sizes[block_id] if end is None else end
        with open(path, "rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                chunk = f.read(min(READ_CHUNK_BYTES, left))
                if not chunk:
                    raise BlockCorrupt(f"block {block_id} is shorter on disk than recorded")
                left -= len(chunk)
                yield chunk

    def verify(self, block_id: str) -> bool:
        """Re-hash a stored block; quarantine it and return False when it no longer matches."""
        hasher = BlockHasher()
        try:
            for chunk in self.iter_chunks(block_id):
                hasher.update(chunk)
        except (BlockCorrupt, OSError) as e:
            if isinstance(e, FileNotFoundError) and block_id not in self._sizes:
                # Deleted (evicted) while being read: gone, not corrupt; quarantining would
                # count a false corruption, or move aside a fresh copy stored meanwhile.
                raise _not_found(block_id) from None
            self.quarantine(block_id)
            return False
        got = hasher.digest()
        if block_id not in self._sizes:
            raise _not_found(block_id)
        if got.block_id != block_id or got.size != self._sizes.get(block_id):
            self.quarantine(block_id)
            return False
        return True

    # -- writing -------------------------------------------------------------------------

    def put(self, block_id: str, data: bytes | bytearray | memoryview, *, blake3: str | None = None) -> bool:
        """Store a whole block after verifying it; True when it was not stored before."""
        validate_block_id(block_id)
        if block_id in self._sizes:
            return False
        with self.writer(block_id, blake3=blake3, expected_size=len(data)) as w:
            w.write(data)
            return w.commit()

    def writer(self, block_id: str, *, blake3: str | None = None, expected_size: int | None = None) -> BlockWriter:
        """A writer that streams one block to a temporary file and commits it verified."""
        validate_block_id(block_id)
        return BlockWriter(self, block_id, blake3=blake3, expected_size=expected_size)

    def piece_writer(self, block_id: str, *, blake3: str | None, size: int) -> PieceWriter:
        """A writer that takes a block's pieces in any order (multicast) and commits it verified."""
        validate_block_id(block_id)
        return PieceWriter(self, block_id, blake3=blake3, size=size)

    def temp_path(self, block_id: str) -> Path:
        """A fresh temporary file name beside the block's place (ignored by readers, swept at start)."""
        return _temp_path(self, block_id)

    def delete(self, block_id: str) -> int:
        """Remove a block; returns the bytes freed (0 when it was not stored)."""
        validate_block_id(block_id)
        with self._lock:
            size = self._sizes.pop(block_id, None)
            if size is None:
                return 0
            self._used -= size
        try:
            _block_path(self._blocks_dir, block_id).unlink()
        except FileNotFoundError:
            pass
        return size

    def quarantine(self, block_id: str) -> None:
        """Move a corrupt block aside so it is never served again."""
        validate_block_id(block_id)
        with self._lock:
            size = self._sizes.pop(block_id, None)
            if size is not None:
                self._used -= size
        self._quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self._quarantine_dir / f"{block_id}.{time.time_ns()}"
        try:
            os.replace(_block_path(self._blocks_dir, block_id), target)
            log.warning("quarantined corrupt block %s to %s", block_id, target)
        except FileNotFoundError:
            pass

    def reserve(self, size: int) -> None:
        """Reserve room for a block about to be written; raises `CapacityExceeded`."""
        with self._lock:
            self._check_room(size)
            self._reserved += size

    def release(self, size: int) -> None:
        """Give back a reservation."""
        with self._lock:
            self._reserved = max(0, self._reserved - size)

    # -- health --------------------------------------------------------------------------

    def check(self, *, verify: bool = True) -> StoreReport:
        """Report orphaned temp files, blocks whose bytes no longer match, and size drift."""
        orphans: list[str] = []
        corrupt: list[str] = []
        drift: list[str] = []
        on_disk: dict[str, int] = {}
        for path in self._blocks_dir.glob("*/*/*"):
            name = path.name
            if name.endswith(_TMP_SUFFIX):
                orphans.append(str(path))
            elif _is_block_name(name):
                on_disk[name] = path.stat().st_size
        with self._lock:
            index = dict(self._sizes)
        for block_id, size in index.items():
            if on_disk.get(block_id) != size:
                drift.append(block_id)
        drift.extend(b for b in on_disk if b not in index)
        if verify:
            for block_id in index:
                if block_id in drift:
                    continue
                got = BlockHasher()
                for chunk in self.iter_chunks(block_id):
                    got.update(chunk)
                if got.digest().block_id != block_id:
                    corrupt.append(block_id)
        return StoreReport(len(index), self._used, orphans, corrupt, drift)

    # -- internals -----------------------------------------------------------------------

    def _check_room(self, size: int) -> None:
        if self.capacity_bytes is not None and self._used + self._reserved + size > self.capacity_bytes:
            raise CapacityExceeded(
                f"storing {size} bytes would exceed the store's capacity of "
                f"{self.capacity_bytes} bytes ({self._used} used, {self._reserved} reserved)",
                capacity_bytes=self.capacity_bytes,
                used_bytes=self._used,
            )

    def _commit(self, tmp: Path, digest: BlockDigest, reserved: int) -> bool:
        target = _block_path(self._blocks_dir, digest.block_id)
        with self._lock:
            self._reserved = max(0, self._reserved - reserved)
            if digest.block_id in self._sizes:
                tmp.unlink(missing_ok=True)
                return False
            self._check_room(digest.size)
            os.replace(tmp, target)
            self._sizes[digest.block_id] = digest.size
            self._used += digest.size
        if self.fsync:
            _fsync_dir(target.parent)
        return True

    def _scan(self) -> None:
        """Index the blocks on disk and delete temporary files left by a crash.

        Every open store holds a shared lock on `root/.lock`. A store that can take the
        lock exclusively is alone, so every temporary file is a crash leftover; otherwise
        another process may be writing, and only temporary files older than
        `STALE_TEMP_S` are deleted.
        """
        lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._lock_fd = lock_fd
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(lock_fd, fcntl.LOCK_SH)  # downgrade: other processes may join now
        cutoff = time.time() - STALE_TEMP_S
        for path in self._blocks_dir.glob("*/*/*"):
            name = path.name
            if name.endswith(_TMP_SUFFIX):
                try:
                    if alone or path.stat().st_mtime < cutoff:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
            elif _is_block_name(name) and path.parent.name == name[2:4]:
                size = path.stat().st_size
                self._sizes[name] = size
                self._used += size


def _temp_path(store: BlockStore, block_id: str) -> Path:
    directory = _block_path(store._blocks_dir, block_id).parent
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f".{block_id}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"


def _block_path(blocks_dir: Path, block_id: str) -> Path:
    return blocks_dir / block_id[:2] / block_id[2:4] / block_id


def _is_block_name(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _not_found(block_id: str) -> BlockNotFound:
    return BlockNotFound(f"block {block_id} is not stored here", block_id=block_id)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
