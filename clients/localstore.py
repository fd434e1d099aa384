"""The device's local block store: where it lives, and reading file byte ranges out of it.

    $CACHENET_HOME (default $XDG_CACHE_HOME/cachenet or ~/.cache/cachenet)/
    └── blocks/ab/cd/<block id>      cachenet.blockstore layout, shared by every pull

Every block in it was verified against its id and BLAKE3 before it was committed, so a
second model that shares blocks with the first (a LoRA variant of the same base) costs
only the bytes it does not share.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cachenet.blockstore import BlockStore
from cachenet.errors import BlockCorrupt
from cachenet.manifest import FileManifest

__all__ = ("HOME_ENV", "default_home", "open_local_store", "read_file_range")

HOME_ENV: Final = "CACHENET_HOME"


def default_home(env: Mapping[str, str]) -> Path:
    """`$CACHENET_HOME`, else the user's cache folder + `cachenet`."""
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cachenet"


def open_local_store(root: Path | None, *, env: Mapping[str, str], fsync: bool = True) -> BlockStore:
    """The block store at `root`, or at the default home when `root` is None."""
    return BlockStore(root if root is not None else default_home(env), fsync=fsync)


def read_file_range(store: BlockStore, f: FileManifest, start: int, end: int) -> bytearray:
    """Bytes [start, end) of a file, read from the stored blocks that make it (blocking)."""
    out = bytearray(max(0, end - start))
    view = memoryview(out)
    position = 0
    for ref, lo, hi in f.segments_in(start, end):
        fd = os.open(store.path(ref.block_id), os.O_RDONLY)
        try:
            while lo < hi:
                got = os.preadv(fd, [view[position : position + hi - lo]], lo)
                if got <= 0:
                    raise BlockCorrupt(
                        f"block {ref.block_id} is shorter on disk than its {ref.size} bytes",
                        block_id=ref.block_id,
                    )
                lo += got
                position += got
        finally:
            os.close(fd)
    return out
