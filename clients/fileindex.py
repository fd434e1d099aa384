"""The device's block index: which byte ranges of the files it already wrote hold which block.

A pull writes each block once, straight into its place in the output file; the device's
store is this index (SQLite, `files.sqlite` beside the block store) instead of a second
copy of the bytes:

    ranges(block_id, path, offset, size)     a verified block at bytes [offset, offset+size) of path
    files(path, sha256, size, dev, ino, mtime_ns, ctime_ns)   a complete output file as it was left

Rows are added only after the bytes they name were verified (XXH3-128 id + BLAKE3) and,
when the pull fsyncs, made durable: a crash (SIGKILL, power loss) can lose rows, never
add a row for bytes that are not there. Outputs are read-only, but a user can still edit
them: a block is copied out of a file only after its bytes hash to its id again (XXH3,
~30 GB/s), and a whole file is reused by hard link only while its size, inode, mtime and
ctime are what the pull recorded (any write or chmod changes the ctime).
"""

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import xxhash

__all__ = ("FileIndex", "INDEX_FILE", "Range", "Scratch", "indexed_ids", "read_verified")

INDEX_FILE: Final = "files.sqlite"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ranges (
    block_id TEXT NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (path, offset)
);
CREATE INDEX IF NOT EXISTS ranges_by_block ON ranges (block_id);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, dev INTEGER NOT NULL,
    ino INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files (sha256);
"""
_MAX_CANDIDATES: Final = 8


@dataclass(frozen=True, slots=True)
class Range:
    """A block's bytes inside a file."""

    block_id: str
    path: str
    offset: int
    size: int


class FileIndex:
    """Block id → ranges of local files, and complete files by SHA-256; safe across threads."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a power loss may lose the last rows, never corrupt the index.
        self._db.execute(f"PRAGMA synchronous={'NORMAL' if fsync else 'OFF'}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def ranges(self, block_id: str) -> list[Range]:
        """Where a block may be found (not yet re-verified)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, offset, size FROM ranges WHERE block_id = ? LIMIT ?", (block_id, _MAX_CANDIDATES)
            ).fetchall()
        return [Range(block_id, p, o, s) for p, o, s in rows]

    def add(self, ranges: Iterable[Range]) -> None:
        """Record verified (and, when the caller syncs, durable) ranges in one transaction."""
        rows = [(r.block_id, r.path, r.offset, r.size) for r in ranges]
        if not rows:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO ranges VALUES (?, ?, ?, ?)", rows)

    def forget_range(self, r: Range) -> None:
        """Drop one range that no longer holds its block."""
        with self._lock:
            self._db.execute("DELETE FROM ranges WHERE path = ? AND offset = ?", (r.path, r.offset))

    def forget_path(self, path: str) -> None:
        """Drop everything recorded about a file."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM ranges WHERE path = ?", (path,))
            self._db.execute("DELETE FROM files WHERE path = ?", (path,))

    def complete_file(self, tmp: str, path: str, sha256: str, st: os.stat_result) -> None:
        """A temporary file became `path` (renamed, read-only, synced): move its ranges and record it."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM ranges WHERE path = ?", (path,))
            self._db.execute("UPDATE ranges SET path = ? WHERE path = ?", (path, tmp))
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, sha256, st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns),
            )

    def intact_file(self, sha256: str, size: int) -> tuple[str, os.stat_result] | None:
        """A complete local file with this content, unchanged since it was recorded (by stat)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, dev, ino, mtime_ns, ctime_ns FROM files WHERE sha256 = ? AND size = ? LIMIT ?",
                (sha256, size, _MAX_CANDIDATES),
            ).fetchall()
        for path, dev, ino, mtime_ns, ctime_ns in rows:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (
                size,
                dev,
                ino,
                mtime_ns,
                ctime_ns,
            ):
                return path, st
        return None

    def restat(self, before: os.stat_result, after: os.stat_result) -> None:
        """Our own link or chmod changed an intact inode's ctime: keep its records valid."""
        with self._lock:
            self._db.execute(
                "UPDATE files SET ctime_ns = ? WHERE dev = ? AND ino = ? AND mtime_ns = ? AND ctime_ns = ?",
                (after.st_ctime_ns, before.st_dev, before.st_ino, before.st_mtime_ns, before.st_ctime_ns),
            )


def indexed_ids(path: Path, block_ids: Iterable[str]) -> set[str]:
    """Which of these blocks an index file names a range for (blocking; nothing when it does not exist)."""
    if not path.exists():
        return set()
    ids, out = list(block_ids), set[str]()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            query = f"SELECT block_id FROM ranges WHERE block_id IN ({','.join('?' * len(part))})"  # noqa: S608
            out.update(str(r[0]) for r in db.execute(query, part))
    except sqlite3.OperationalError:  # being created
        return set()
    finally:
        db.close()
    return out


class Scratch(Protocol):
    """A reused buffer: `view(n)` is n writable bytes."""

    def view(self, size: int) -> memoryview:
        """A view of `size` bytes."""
        ...


def read_verified(index: FileIndex, block_id: str, size: int, scratch: Scratch) -> bool:
    """Fill `scratch.view(size)` with the block from a recorded range whose bytes still hash to its id.

    Ranges that no longer do (the file was edited, truncated or deleted) are forgotten.
    """
    for r in index.ranges(block_id):
        if r.size != size:
            continue
        view = scratch.view(size)
        try:
            fd = os.open(r.path, os.O_RDONLY)
        except OSError:
            index.forget_range(r)
            continue
        try:
            got = os.preadv(fd, [view], r.offset)
        except OSError:
            got = -1
        finally:
            os.close(fd)
        if got == size and xxhash.xxh3_128_hexdigest(view) == block_id:
            return True
        index.forget_range(r)
    return False
