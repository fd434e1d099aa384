"""Cutting files into tensor-aligned, content-addressed blocks.

A safetensors file becomes its header (one block) followed by one block per tensor's
data, a tensor larger than `max_block_size` being cut into slices. Any other file is
cut into slices of `max_block_size`. Identical tensors therefore become the same block
whatever file, model or position they sit in.
"""

import hashlib
import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cachenet.blockid import digest_of
from cachenet.errors import BadInput
from cachenet.manifest import BlockRef, FileKind, FileManifest
from cachenet.names import validate_file_path
from cachenet.safetensors import parse_header

__all__ = (
    "CutFile",
    "DEFAULT_MAX_BLOCK_BYTES",
    "StreamCutter",
    "chunk_buffer",
    "cut_file",
    "cut_folder",
    "list_folder_files",
    "plan_segments",
)

DEFAULT_MAX_BLOCK_BYTES: Final = 64 * 1024 * 1024
SKIPPED_DIRS: Final = frozenset({".git", ".cache", "__pycache__"})
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class CutFile:
    """A file cut into blocks: its manifest entry and where each block lies in the source file."""

    manifest: FileManifest
    source: Path
    offsets: tuple[int, ...]

    def blocks(self) -> Iterator[tuple[BlockRef, int]]:
        """(block, offset in the source file) pairs, in file order."""
        return zip(self.manifest.blocks, self.offsets, strict=True)


def plan_segments(
    buf: bytes | memoryview | mmap.mmap, *, kind: FileKind, name: str, max_block_size: int
) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of a file's blocks, in order, covering it exactly."""
    if max_block_size <= 0:
        raise BadInput(f"max block size must be positive, got {max_block_size}")
    size = len(buf)
    if kind == "raw":
        return _slices(0, size, max_block_size)
    prefix_len = min(size, 8 + _peek_header_len(buf))
    # A copy of the (small, bounded) header: no view of a mapped file may outlive a failure.
    return _safetensors_segments(bytes(buf[:prefix_len]), size, name, max_block_size)


class StreamCutter:
    """Cuts a file that arrives in pieces into exactly the blocks `chunk_buffer` would make.

    One pass, memory bounded by one block: bytes are held only until the block they
    belong to is complete. A safetensors file's blocks are known once its header arrived.
    """

    def __init__(self, *, path: str, size: int, max_block_size: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        self.path = validate_file_path(path)
        self.size = size
        self.kind: FileKind = "safetensors" if path.endswith(".safetensors") else "raw"
        self.max_block_size = max_block_size
        self._segments: list[tuple[int, int]] | None = _slices(0, size, max_block_size) if self.kind == "raw" else None
        self._next = 0
        self._buf = bytearray()
        self._received = 0
        self._sha = hashlib.sha256()
        self.refs: list[BlockRef] = []

    def feed(self, data: bytes) -> list[tuple[BlockRef, bytes]]:
        """Take the next bytes; returns the blocks they completed, in order."""
        self._received += len(data)
        if self._received > self.size:
            raise BadInput(f"{self.path}: more than the announced {self.size} bytes", path=self.path)
        self._sha.update(data)
        self._buf += data
        if self._segments is None:
            if len(self._buf) < 8 or len(self._buf) < 8 + _peek_header_len(self._buf):
                if self._received < self.size:
                    return []
            prefix = bytes(self._buf[: 8 + _peek_header_len(self._buf)])
            self._segments = _safetensors_segments(prefix, self.size, self.path, self.max_block_size)
        out = []
        while self._next < len(self._segments):
            start, end = self._segments[self._next]
            if len(self._buf) < end - start:
                break
            block = bytes(self._buf[: end - start])
            del self._buf[: end - start]
            d = digest_of(block)
            ref = BlockRef(d.block_id, d.blake3, d.size)
            self.refs.append(ref)
            out.append((ref, block))
            self._next += 1
        return out

    def finish(self) -> FileManifest:
        """The file's manifest entry once every byte arrived; raises `BadInput` otherwise."""
        if self._received != self.size or self._segments is None or self._next != len(self._segments):
            raise BadInput(f"{self.path}: got {self._received} of {self.size} bytes", path=self.path)
        return FileManifest(self.path, self.size, self._sha.hexdigest(), tuple(self.refs), self.kind)


def chunk_buffer(
    buf: bytes | memoryview | mmap.mmap,
    *,
    path: str,
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
    progress: Progress | None = None,
) -> tuple[FileManifest, tuple[int, ...]]:
    """Cut a file held in memory (or mapped) into blocks; returns its manifest entry and offsets.

    SHA-256 of the whole file runs in a second thread while the blocks are hashed.
    """
    validate_file_path(path)
    kind: FileKind = "safetensors" if path.endswith(".safetensors") else "raw"
    segments = plan_segments(buf, kind=kind, name=path, max_block_size=max_block_size)
    refs = []
    with memoryview(buf) as view, ThreadPoolExecutor(max_workers=1) as pool:
        sha_future = pool.submit(_sha256, view)
        for start, end in segments:
            with view[start:end] as piece:
                d = digest_of(piece)
            refs.append(BlockRef(d.block_id, d.blake3, d.size))
            if progress is not None:
                progress(d.size)
        sha256 = sha_future.result()
    manifest = FileManifest(path, len(buf), sha256, tuple(refs), kind)
    return manifest, tuple(start for start, _ in segments)


def cut_file(
    source: Path,
    path: str,
    *,
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
    progress: Progress | None = None,
) -> CutFile:
    """Cut one file on disk (memory-mapped, never read whole into memory)."""
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            manifest, offsets = chunk_buffer(b"", path=path, max_block_size=max_block_size)
            return CutFile(manifest, source, offsets)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            manifest, offsets = chunk_buffer(mm, path=path, max_block_size=max_block_size, progress=progress)
    return CutFile(manifest, source, offsets)


def list_folder_files(folder: Path) -> list[tuple[Path, str]]:
    """(file on disk, relative POSIX path) of every file under `folder`, sorted by path."""
    folder = Path(folder)
    if folder.is_file():
        return [(folder, folder.name)]
    if not folder.is_dir():
        raise BadInput(f"{folder} is neither a file nor a folder", path=str(folder))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for filename in filenames:
            full = Path(dirpath) / filename
            # Hugging Face cache snapshots are symlinks into blobs/: follow file links.
            if not full.is_file():
                continue
            rel = full.relative_to(folder).as_posix()
            found.append((full, validate_file_path(rel)))
    return sorted(found, key=lambda item: item[1])


def cut_folder(
    folder: Path,
    *,
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
    progress: Progress | None = None,
) -> list[CutFile]:
    """Cut every file of a folder (a Hugging Face repository or PEFT adapter folder)."""
    return [
        cut_file(source, rel, max_block_size=max_block_size, progress=progress)
        for source, rel in list_folder_files(folder)
    ]


def _safetensors_segments(prefix: bytes, size: int, name: str, max_block_size: int) -> list[tuple[int, int]]:
    header = parse_header(prefix, file_size=size, name=name)
    segments = _slices(0, header.data_start, max_block_size)
    for tensor in header.tensors:
        segments.extend(_slices(tensor.start, tensor.end, max_block_size))
    return segments


def _sha256(view: memoryview) -> str:
    h = hashlib.sha256()
    step = 64 * 1024 * 1024
    for start in range(0, len(view), step):
        with view[start : start + step] as piece:
            h.update(piece)
    return h.hexdigest()


def _peek_header_len(buf: bytes | bytearray | memoryview | mmap.mmap) -> int:
    if len(buf) < 8:
        return 0
    return int.from_bytes(bytes(buf[:8]), "little")


def _slices(start: int, end: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, end)) for s in range(start, end, step)]
