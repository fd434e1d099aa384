"""What an edge node holds: the block store under its capacity, the replacement policy and the plan's pins.

A fetched block is written into a `Sink`: the store's temporary file when the policy admits it
and room can be made by evicting unpinned victims, else a spool file that is served to the
requesters waiting for it and then dropped. Either way the bytes are verified (id and BLAKE3)
before anyone sees them whole.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from cachenet.blockid import BlockHasher
from cachenet.blockstore import BlockStore
from cachenet.blockwriters import BlockWriter
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.persistence import load_policy, save_policy
from cachenet.errors import BlockCorrupt, CapacityExceeded
from cachenet.manifest import BlockRef
from placement.replacement import ReplacementPolicy

__all__ = ("Admission", "SPOOL_LINGER_S", "Sink")
log = logging.getLogger(__name__)

SPOOL_LINGER_S: Final = 60.0


class Admission:
    """The store, its policy and the pinned blocks; decides where a fetched block's bytes go."""

    def __init__(self, settings: EdgeSettings, metrics: EdgeMetrics, *, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = BlockStore(
            settings.data_dir / "store", capacity_bytes=settings.capacity_bytes, fsync=settings.fsync
        )
        self.policy: ReplacementPolicy = load_policy(
            settings.data_dir,
            settings.policy,
            capacity_bytes=settings.capacity_bytes,
            held=self.store.sizes(),
            clock=clock,
        )
        # The plan's blocks: never evicted (set by the plan runner).
        self.pins: Mapping[str, BlockRef] = {}
        self._spool = settings.data_dir / "spool"
        self._spool.mkdir(parents=True, exist_ok=True)
        for leftover in self._spool.iterdir():
            leftover.unlink(missing_ok=True)
        self._room = asyncio.Lock()
        metrics.capacity_bytes.set(settings.capacity_bytes)

    async def open_sink(self, block_id: str, size: int, blake3: str | None) -> "Sink":
        """Where a block of `size` bytes goes: the store when admitted (room made), else a spool file."""
        async with self._room:
            if self.policy.admit(block_id, size) and await self._make_room(size):
                try:
                    writer = self.store.writer(block_id, blake3=blake3, expected_size=size)
                    return Sink(writer=writer, store=self.store)
                except CapacityExceeded:
                    pass
        self.metrics.not_admitted.inc()
        spool = _SpoolFile(self._spool / f"{block_id}.{uuid.uuid4().hex[:8]}", block_id, blake3, size)
        return Sink(spool=spool)

    def stored(self, block_id: str, size: int, *, model: str | None) -> None:
        """A block entered the store: the policy learns of it."""
        self.policy.insert(block_id, size, models=[model] if model else [])
        self.refresh_gauges()

    def spooled(self, path: Path) -> None:
        """A spool file was served: readers open it when they start, so give late ones time, then drop it."""
        asyncio.get_running_loop().call_later(SPOOL_LINGER_S, path.unlink, True)

    def forget_corrupt(self, block_id: str, found_by: str) -> None:
        """A block failed verification on disk (`BlockStore.verify` quarantined it): forget and count it."""
        log.error("block %s was corrupt on disk (found by %s); quarantined, will be re-fetched", block_id, found_by)
        self.metrics.corrupt_blocks.labels(found_by).inc()
        self.policy.remove(block_id)
        self.refresh_gauges()

    def pinned_bytes(self) -> int:
        """Bytes of pinned blocks the store holds."""
        return sum(r.size for b, r in self.pins.items() if self.store.has(b))

    def refresh_gauges(self) -> None:
        """Set the used and pinned bytes gauges."""
        self.metrics.used_bytes.set(self.store.used_bytes)
        self.metrics.pinned_bytes.set(self.pinned_bytes())

    def save_state(self) -> None:
        """Persist the replacement policy's state (recency/frequency) for a restart."""
        save_policy(self.settings.data_dir, self.policy)

    async def _make_room(self, size: int) -> bool:
        """Evict unpinned victims so that `size` more bytes fit; False when that is impossible."""
        free = self.store.free_bytes
        if free is not None and free >= size:
            return True
        capacity = self.store.capacity_bytes
        assert capacity is not None  # an edge store always has a capacity, so free is not None
        # Blocks a worker thread committed whose flight has not yet told the policy (commit and
        # `policy.insert` are on either side of an await) count too, or too little is evicted.
        untracked = max(0, self.store.used_bytes - self.policy.used_bytes)
        try:
            victims = self.policy.victims(capacity - (free or 0) - self.store.used_bytes + size + untracked)
        except CapacityExceeded:
            return False
        for block_id in victims:
            if block_id in self.pins:
                continue
            await asyncio.to_thread(self.store.delete, block_id)
            self.policy.remove(block_id)
            self.metrics.evictions.labels(self.settings.policy).inc()
            log.debug("evicted %s", block_id)
        self.refresh_gauges()
        free = self.store.free_bytes
        return free is None or free >= size


class Sink:
    """Where a fetched block's bytes go: the store (admitted) or a spool file (not admitted)."""

    def __init__(
        self, *, writer: BlockWriter | None = None, store: BlockStore | None = None, spool: "_SpoolFile | None" = None
    ) -> None:
        self.writer, self.store, self.spool = writer, store, spool
        self.stored = writer is not None
        if writer is not None:
            self.path: Path = writer.temp_path
        else:
            assert spool is not None
            self.path = spool.path

    def write(self, data: bytes) -> None:
        """Append bytes (hashed as they go)."""
        if self.writer is not None:
            self.writer.write(data)
        else:
            assert self.spool is not None
            self.spool.write(data)

    def commit(self) -> Path:
        """Verify the bytes and return the block's final path; raises `BlockCorrupt`."""
        if self.writer is not None:
            assert self.store is not None
            self.writer.commit()
            return self.store.path(self.writer.block_id)
        assert self.spool is not None
        return self.spool.commit()

    def abort(self) -> None:
        """Drop the bytes written so far."""
        if self.writer is not None:
            self.writer.abort()
        elif self.spool is not None:
            self.spool.abort()


class _SpoolFile:
    """A verified temporary file for a block that is served but not stored."""

    def __init__(self, path: Path, block_id: str, blake3: str | None, size: int) -> None:
        self.path, self.block_id, self.blake3, self.size = path, block_id, blake3, size
        self._file = open(path, "wb")  # noqa: SIM115 - closed in commit/abort
        self._hasher = BlockHasher()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hasher.update(data)

    def commit(self) -> Path:
        self._file.close()
        try:
            self._hasher.verify(self.block_id, self.blake3)
        except BlockCorrupt:
            self.path.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
