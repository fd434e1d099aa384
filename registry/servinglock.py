"""The lock a running `cachenet origin serve` holds on its data folder.

Publishing into the folder of a running origin (`publish --data`) would write blocks and
catalogue rows the running origin does not know about (its block index and manifest cache
are in memory), so such a publish is refused with a line naming the origin's URL. The lock
is an flock on `DATA/serving.lock`: the kernel drops it when the process dies, so a crashed
origin never leaves a stale lock.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from cachenet.errors import BadInput

__all__ = ("LOCK_FILE", "refuse_if_served", "serving", "serving_url")

LOCK_FILE: Final = "serving.lock"


@contextmanager
def serving(data_dir: Path, url: str) -> Iterator[None]:
    """Hold the serving lock of `data_dir` (recording `url`) while the block runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read(fd)
            raise BadInput(f"another origin already serves {data_dir} (at {other}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, url.encode(), 0)
        yield
    finally:
        os.close(fd)


def serving_url(data_dir: Path) -> str | None:
    """The URL of the origin serving `data_dir` now, or None when none does."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or "an unknown URL"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_served(data_dir: Path) -> None:
    """Raise `BadInput` when a running origin serves `data_dir` (write through it instead)."""
    url = serving_url(data_dir)
    if url is not None:
        raise BadInput(
            f"the origin at {url} is serving {data_dir} and would not see what is written into its folder; "
            f"publish through it instead: --origin {url} (without --data)"
        )


def _read(fd: int) -> str:
    return os.pread(fd, 512, 0).decode(errors="replace").strip()
