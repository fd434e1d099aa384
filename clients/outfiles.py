"""A pull's output files, written in place: each block lands once, at its offset, verified.

Every planned file is a temporary file `.<name>.<uuid8>.tmp` of its final size beside its
target. A fetched block streams into its first place in it (`FileBlockWriter`, hashed with
XXH3-128 + BLAKE3 on the way) and is copied to any other place the model repeats it; a
block the device already has comes out of an earlier output file (re-verified by its
XXH3 id) or the block store, and a whole file the device already has intact is hard-linked.
The file's SHA-256 is the manifest's: its blocks were each verified against the manifest,
so the file is not read again (`verify_files` reads and hashes it once more).

`checkpoint` makes the verified blocks durable (`fdatasync` when the pull syncs) and then
records them in the `FileIndex`, so a pull killed at any moment resumes from them;
`finish` syncs each file once, makes it read-only, renames it and records it.
"""

import hashlib
import logging
import os
import re
import stat
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import xxhash

from cachenet.blockid import BlockHasher
from cachenet.blockstore import BlockStore
from cachenet.errors import BlockCorrupt, BlockNotFound, IntegrityError
from cachenet.manifest import BlockRef, FileManifest
from clients.fileindex import FileIndex, Range, Scratch, read_verified

__all__ = ("FileBlockWriter", "OutputFiles")
log = logging.getLogger(__name__)

_READ_ONLY: Final = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_HASH_CHUNK: Final = 4 * 1024 * 1024


@dataclass(slots=True)
class _Out:
    """One output file being written."""

    f: FileManifest
    target: Path
    tmp: Path
    fd: int = -1
    linked: bool = False
    recorded: bool = False
    pending: list[Range] = field(default_factory=list)


class OutputFiles:
    """The files of one pull under `out_dir`, filled block by block; see the module doc."""

    def __init__(self, out_dir: Path, files: list[FileManifest], index: FileIndex, *, fsync: bool = True) -> None:
        self.out_dir = out_dir
        self.index = index
        self.fsync = fsync
        self._lock = threading.Lock()
        self._sync = threading.Lock()  # checkpoint, finish and close take turns with the descriptors
        self._outs: list[_Out] = []
        self._places: dict[str, list[tuple[_Out, int]]] = {}
        self._refs: dict[str, BlockRef] = {}
        self._done: set[str] = set()
        for f in files:
            target = out_dir / f.path
            self._outs.append(_Out(f, target, target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"))

    # -- setting up ----------------------------------------------------------------------

    def open(self) -> None:
        """Link intact local copies of whole files; create the others' temporary files (blocking)."""
        for out in self._outs:
            out.target.parent.mkdir(parents=True, exist_ok=True)
            if self._link_intact(out):
                continue
            out.fd = os.open(out.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(out.fd, out.f.size)
            offset = 0
            for ref in out.f.blocks:
                self._places.setdefault(ref.block_id, []).append((out, offset))
                self._refs.setdefault(ref.block_id, ref)
                offset += ref.size

    def _link_intact(self, out: _Out) -> bool:
        found = self.index.intact_file(out.f.sha256, out.f.size)
        if found is None:
            return False
        source, before = found
        try:
            os.chmod(source, _READ_ONLY)
            os.link(source, out.tmp)
        except OSError as e:
            log.info("cannot hard-link %s (%s); copying it", source, e)
            out.tmp.unlink(missing_ok=True)
            return self._copy_whole(out, source)
        after = os.stat(source)
        self.index.restat(before, after)
        out.linked = True
        return True

    def _copy_whole(self, out: _Out, source: str) -> bool:
        try:
            with open(source, "rb") as src, open(out.tmp, "xb") as dst:
                left = out.f.size
                while left:
                    n = os.copy_file_range(src.fileno(), dst.fileno(), left)
                    if n == 0:
                        raise OSError(f"{source} ended early")
                    left -= n
        except OSError as e:
            log.info("cannot copy %s (%s); fetching it", source, e)
            out.tmp.unlink(missing_ok=True)
            return False
        out.linked = True
        return True

    def needed(self) -> dict[str, BlockRef]:
        """Blocks that are still to be placed."""
        with self._lock:
            return {b: r for b, r in self._refs.items() if b not in self._done}

    def place_local(self, store: BlockStore | None) -> int:
        """Copy blocks the device has (earlier outputs, re-verified; the block store) into place; bytes placed."""
        placed = 0
        scratch = _Scratch()
        for block_id, ref in self.needed().items():
            if read_verified(self.index, block_id, ref.size, scratch) or _read_stored(store, ref, scratch):
                self._put(ref, scratch.view(ref.size))
                placed += ref.size
        return placed

    def _put(self, ref: BlockRef, data: memoryview) -> None:
        for out, offset in self._places[ref.block_id]:
            _pwrite_all(out.fd, data, offset)
        self._mark_done(ref)

    def _mark_done(self, ref: BlockRef) -> None:
        with self._lock:
            self._done.add(ref.block_id)
            for out, offset in self._places[ref.block_id]:
                out.pending.append(Range(ref.block_id, str(out.tmp), offset, ref.size))

    # -- fetching into place -------------------------------------------------------------

    def has(self, block_id: str) -> bool:
        """True when the block is in place (or not part of these files)."""
        return block_id in self._done or block_id not in self._places

    def writer(
        self, block_id: str, *, blake3: str | None = None, expected_size: int | None = None
    ) -> "FileBlockWriter":
        """A writer that streams one block into its first place (same interface as `BlockWriter`)."""
        ref = self._refs[block_id]
        out, offset = self._places[block_id][0]
        return FileBlockWriter(self, ref, out.fd, offset)

    def copy_from_store(self, store: BlockStore) -> None:
        """Place blocks that arrived in the block store meanwhile (by multicast)."""
        scratch = _Scratch()
        for ref in self.needed().values():
            if _read_stored(store, ref, scratch):
                self._put(ref, scratch.view(ref.size))

    # -- durability ----------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Make the blocks placed so far durable, then record them (blocking)."""
        with self._sync:
            with self._lock:
                batches = [(out, out.pending) for out in self._outs if out.pending and out.fd >= 0]
                for out, _ in batches:
                    out.pending = []
            for out, ranges in batches:
                if self.fsync:
                    os.fdatasync(out.fd)
                self.index.add(ranges)
                out.recorded = True

    def finish(self, *, verify_files: bool = False) -> None:
        """Sync, check, make read-only, rename and record every file (blocking)."""
        missing = self.needed()
        if missing:
            raise BlockNotFound(f"{len(missing)} blocks were never placed", block_id=next(iter(missing)))
        with self._sync:
            for out in self._outs:
                self._finish_one(out, verify_files=verify_files)
        if self.fsync:
            for directory in {out.target.parent for out in self._outs}:
                _fsync_dir(directory)

    def _finish_one(self, out: _Out, *, verify_files: bool) -> None:
        if out.linked:
            before = os.stat(out.tmp)
            os.replace(out.tmp, out.target)
            after = os.stat(out.target)  # a rename changes the ctime too
            self.index.restat(before, after)
            self.index.complete_file(str(out.tmp), str(out.target), out.f.sha256, after)
            return
        if verify_files:
            _check_sha256(out)
        if self.fsync:
            os.fsync(out.fd)
        os.fchmod(out.fd, _READ_ONLY)
        os.close(out.fd)
        out.fd = -1
        os.replace(out.tmp, out.target)
        st = os.stat(out.target)
        with self._lock:
            ranges, out.pending = out.pending, []
        self.index.add(ranges)
        self.index.complete_file(str(out.tmp), str(out.target), out.f.sha256, st)
        self._sweep_leftovers(out)

    def _sweep_leftovers(self, out: _Out) -> None:
        """Temporary files an interrupted pull left for this target (their recorded blocks were reused)."""
        pattern = re.compile(rf"\.{re.escape(out.target.name)}\.[0-9a-f]{{8}}\.tmp")
        for path in out.target.parent.iterdir():
            if pattern.fullmatch(path.name) and path != out.tmp:
                path.unlink(missing_ok=True)
                self.index.forget_path(str(path))

    def close(self) -> None:
        """Close what is still open; temporary files stay (their recorded blocks serve a resume)."""
        with self._sync:
            self._close()

    def _close(self) -> None:
        for out in self._outs:
            if out.fd >= 0:
                os.close(out.fd)
                out.fd = -1
                if not out.recorded:
                    out.tmp.unlink(missing_ok=True)
            if out.linked:
                out.tmp.unlink(missing_ok=True)


class FileBlockWriter:
    """Streams one block into its place in an output file; `commit` verifies it and copies it to its other places."""

    def __init__(self, files: OutputFiles, ref: BlockRef, fd: int, offset: int) -> None:
        self.files, self.ref, self.fd, self.offset = files, ref, fd, offset
        self._hasher = BlockHasher()

    @property
    def written(self) -> int:
        """Bytes written so far."""
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append the next piece of the block."""
        if self._hasher.size + len(data) > self.ref.size:
            raise BlockCorrupt(
                f"block {self.ref.block_id}: more bytes than the expected {self.ref.size}", block_id=self.ref.block_id
            )
        _pwrite_all(self.fd, memoryview(data), self.offset + self._hasher.size)
        self._hasher.update(data)

    def commit(self) -> bool:
        """Verify the block (id, BLAKE3, size) and place its copies; raises `BlockCorrupt`."""
        self._hasher.verify(self.ref.block_id, self.ref.blake3)
        if self._hasher.size != self.ref.size:
            raise BlockCorrupt(
                f"block {self.ref.block_id}: {self._hasher.size} bytes, expected {self.ref.size}",
                block_id=self.ref.block_id,
            )
        others = self.files._places[self.ref.block_id][1:]  # noqa: SLF001 - the writer belongs to its files
        if others:
            data = memoryview(os.pread(self.fd, self.ref.size, self.offset))
            for out, offset in others:
                _pwrite_all(out.fd, data, offset)
        self.files._mark_done(self.ref)  # noqa: SLF001
        return True

    def abort(self) -> None:
        """Nothing to undo: unverified bytes are never recorded and get overwritten."""


def _read_stored(store: BlockStore | None, ref: BlockRef, scratch: "_Scratch") -> bool:
    if store is None or not store.has(ref.block_id):
        return False
    buf = scratch.view(ref.size)
    try:
        fd = os.open(store.path(ref.block_id), os.O_RDONLY)
    except (OSError, BlockNotFound):
        return False
    try:
        got = os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    return got == ref.size and xxhash.xxh3_128_hexdigest(buf) == ref.block_id


class _Scratch(Scratch):
    """One reused buffer, allocated only when a block is actually read, grown to the largest."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def view(self, size: int) -> memoryview:
        if len(self._buf) < size:
            self._buf = bytearray(size)
        return memoryview(self._buf)[:size]


def _check_sha256(out: _Out) -> None:
    sha = hashlib.sha256()
    position = 0
    while position < out.f.size:
        chunk = os.pread(out.fd, min(_HASH_CHUNK, out.f.size - position), position)
        if not chunk:
            break
        sha.update(chunk)
        position += len(chunk)
    if sha.hexdigest() != out.f.sha256:
        raise IntegrityError(
            f"{out.f.path}: the written bytes hash to {sha.hexdigest()}, the manifest says {out.f.sha256}",
            path=out.f.path,
        )


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
