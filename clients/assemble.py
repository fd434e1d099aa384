"""Writing a model's files from stored blocks: atomically, and byte-identical to what was published.

Each file is written into `.<name>.<uuid8>.tmp` beside its target by `pwrite` of its
blocks in order, hashed with SHA-256 on the way and compared with the manifest, fsynced,
then renamed over the target. A reader never sees a half-written file, and a file whose
hash differs from the manifest's never appears at all.
"""

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cachenet.blockstore import BlockStore
from cachenet.errors import BlockCorrupt, IntegrityError
from cachenet.manifest import FileManifest

__all__ = ("assemble_file", "fsync_dir")

_BUFFER_BYTES: Final = 4 * 1024 * 1024
Patch = Callable[[int], None]


def assemble_file(
    store: BlockStore,
    f: FileManifest,
    target: Path,
    *,
    fsync: bool = True,
    patch: Patch | None = None,
) -> None:
    """Write file `f` to `target` from stored blocks (blocking; run it in a thread).

    `patch(fd)` may rewrite parts of the temporary file after its SHA-256 checked out
    (a LoRA merge overwrites the targeted weights in place). Raises `IntegrityError` when
    the assembled bytes do not hash to the manifest's SHA-256, `BlockNotFound` when a
    block is not stored.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        sha = hashlib.sha256()
        buf = bytearray(min(_BUFFER_BYTES, max(1, max((r.size for r in f.blocks), default=1))))
        view = memoryview(buf)
        position = 0
        for ref in f.blocks:
            with open(store.path(ref.block_id), "rb", buffering=0) as block:
                left = ref.size
                while left:
                    n = block.readinto(view[: min(len(buf), left)])
                    if not n:
                        raise BlockCorrupt(
                            f"stored block {ref.block_id} is shorter than {ref.size} bytes",
                            block_id=ref.block_id,
                        )
                    sha.update(view[:n])
                    _pwrite_all(fd, view[:n], position)
                    position += n
                    left -= n
        if sha.hexdigest() != f.sha256:
            raise IntegrityError(
                f"{f.path}: assembled bytes hash to {sha.hexdigest()}, "
                f"the manifest says {f.sha256}; "
                "the local block store may be damaged (run BlockStore.check)",
                path=f.path,
            )
        if patch is not None:
            patch(fd)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, target)
    if fsync:
        fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n
