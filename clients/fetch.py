"""Fetching blocks into the local store: several sources at once, every block verified, retried.

Each missing block streams from one source into `BlockStore.writer` (hashed as it is
written, committed only if it matches its id, BLAKE3 and size). On a transport error,
a timeout or a stall (no bytes for `stall_timeout_s`), the block continues from the
byte it had reached on another source (`Range`), so a source that dies in the middle of
a large block costs only what it had not sent. Bytes that do not verify are thrown away
and the block is fetched whole again; a source that sent them alone is never asked for
that block again. Blocks already stored are never fetched: an interrupted pull resumes
where it stopped.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from cachenet.blockstore import BlockStore
from cachenet.errors import BlockCorrupt, CachenetError, CapacityExceeded, UpstreamUnavailable
from cachenet.httpclient import raise_for_status
from cachenet.manifest import BlockRef
from cachenet.protocol.headers import BLAKE3_HEADER
from clients.sources import NoSourceLeft, Source, SourcePool

__all__ = ("BlockFetcher", "BlockSink", "FetchStats", "SinkWriter")
log = logging.getLogger(__name__)

Progress = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class FetchStats:
    """What a fetcher did so far, in bytes and blocks."""

    fetched_bytes: int
    fetched_blocks: int
    received_bytes: int
    wasted_bytes: int
    refused_blocks: int
    retries: int


class SinkWriter(Protocol):
    """One block being written (`BlockWriter`, or `FileBlockWriter` straight into an output file)."""

    @property
    def written(self) -> int:
        """Bytes written so far."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append the next piece."""
        ...

    def commit(self) -> bool:
        """Verify and keep the block; raises `BlockCorrupt`."""
        ...

    def abort(self) -> None:
        """Discard the partial block."""
        ...


class BlockSink(Protocol):
    """Where fetched blocks go: the block store, or a pull's output files (`OutputFiles`)."""

    def has(self, block_id: str) -> bool:
        """True when the block needs no fetching."""
        ...

    def writer(self, block_id: str, *, blake3: str | None = None, expected_size: int | None = None) -> SinkWriter:
        """A writer for one block."""
        ...


@dataclass(slots=True)
class _Partial:
    """A block being written, possibly by several sources in turn."""

    writer: SinkWriter
    contributors: set[str] = field(default_factory=set)


class BlockFetcher:
    """Fetches blocks missing from `store` through `pool`; one transfer per block."""

    def __init__(
        self, store: BlockStore, pool: SourcePool, *, progress: Progress | None = None, sink: BlockSink | None = None
    ) -> None:
        self.store = store
        self.sink: BlockSink = store if sink is None else sink
        # When set, `ensure` first waits for the sink it yields (a pull's output files being opened).
        self.ready: Callable[[], Awaitable[BlockSink]] | None = None
        self.pool = pool
        self.progress = progress
        self._slots = asyncio.Semaphore(pool.settings.concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._fetched_bytes = 0
        self._fetched_blocks = 0
        self._received = 0
        self._wasted = 0
        self._refused = 0
        self._retries = 0

    def stats(self) -> FetchStats:
        """Counters so far."""
        return FetchStats(
            self._fetched_bytes,
            self._fetched_blocks,
            self._received,
            self._wasted,
            self._refused,
            self._retries,
        )

    async def ensure(self, refs: Iterable[BlockRef]) -> None:
        """Return once every block in `refs` is stored, fetching the missing ones.

        Raises `UpstreamUnavailable` when a block could not be had intact from any
        source within `max_attempts`, `CapacityExceeded` when the disk is full.
        """
        if self.ready is not None:
            self.sink = await self.ready()
        wanted = {r.block_id: r for r in refs}
        while True:
            tasks, created = self._start(wanted.values())
            if not tasks:
                return
            try:
                await asyncio.gather(*(asyncio.shield(t) for t in tasks))
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    await _cancel(created)
                    raise
                # A transfer another caller started was cancelled under us: start over.
            except BaseException:
                await _cancel(created)
                raise

    def _start(self, refs: Iterable[BlockRef]) -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
        tasks, created = [], []
        # Largest first: the long transfers start early and the tail is made of small ones.
        for ref in sorted(refs, key=lambda r: -r.size):
            if self.sink.has(ref.block_id):
                continue
            task = self._inflight.get(ref.block_id)
            if task is None:
                task = asyncio.create_task(self._fetch(ref), name=f"fetch {ref.block_id}")
                self._inflight[ref.block_id] = task
                task.add_done_callback(functools.partial(self._forget, ref.block_id))
                created.append(task)
            tasks.append(task)
        return tasks, created

    def _forget(self, block_id: str, task: "asyncio.Task[None]") -> None:
        if self._inflight.get(block_id) is task:
            del self._inflight[block_id]

    async def _fetch(self, ref: BlockRef) -> None:
        async with self._slots:
            if not self.sink.has(ref.block_id):
                await self._fetch_one(ref)

    async def _fetch_one(self, ref: BlockRef) -> None:
        settings = self.pool.settings
        excluded: set[str] = set()  # failed for this block in the current round
        liars: set[str] = set()  # sent wrong bytes for this block on their own
        partial: _Partial | None = None
        attempts = 0
        problems: list[str] = []
        try:
            while True:
                written = partial.writer.written if partial is not None else 0
                try:
                    src = await self.pool.acquire(ref.size - written, excluded | liars)
                except NoSourceLeft:
                    if attempts >= settings.max_attempts or len(liars) == len(self.pool.sources):
                        raise UpstreamUnavailable(
                            f"block {ref.block_id} ({ref.size} bytes): no source delivered it "
                            f"intact after "
                            f"{attempts} attempts ({'; '.join(problems[-4:])})",
                            block_id=ref.block_id,
                        ) from None
                    excluded.clear()  # a new round: sources that failed may have recovered
                    continue
                owed, got = ref.size - written, 0
                try:
                    if partial is None:
                        writer = await asyncio.to_thread(
                            self.sink.writer,
                            ref.block_id,
                            blake3=ref.blake3,
                            expected_size=ref.size,
                        )
                        partial = _Partial(writer)
                    got = await self._transfer(src, ref, partial)
                    await asyncio.to_thread(partial.writer.commit)
                except CapacityExceeded:
                    raise
                except BlockCorrupt as e:
                    attempts += 1
                    self._refused += 1
                    contributors = partial.contributors | {src.url} if partial is not None else {src.url}
                    wasted = partial.writer.written if partial is not None else 0
                    self._wasted += wasted
                    if self.progress is not None and wasted:
                        self.progress(-wasted)
                    if partial is not None:
                        partial.writer.abort()
                    partial = None
                    src.corrupt += 1
                    self.pool.failed(src, e, transport=False)
                    # Alone, the source is the liar; with several, start over without blaming one.
                    (liars if len(contributors) == 1 else excluded).add(src.url)
                    problems.append(f"{src.url}: {e.message}")
                    log.warning("refused block %s from %s: %s", ref.block_id, src.url, e.message)
                    continue
                except (aiohttp.ClientError, TimeoutError, OSError, CachenetError) as e:
                    attempts += 1
                    self._retries += 1
                    # A typed error came from a live server (404, 503...): it need not back off.
                    self.pool.failed(src, e, transport=not isinstance(e, CachenetError))
                    excluded.add(src.url)
                    problems.append(f"{src.url}: {type(e).__name__}: {e}"[:200])
                    log.info("block %s from %s failed (%s); trying elsewhere", ref.block_id, src.url, e)
                    continue
                finally:
                    await self.pool.release(src, unused=max(0, owed - got))
                self.pool.succeeded(src)
                self._fetched_bytes += ref.size
                self._fetched_blocks += 1
                log.debug("stored block %s (%d bytes) from %s", ref.block_id, ref.size, src.url)
                partial = None
                return
        finally:
            if partial is not None:
                partial.writer.abort()

    async def _transfer(self, src: Source, ref: BlockRef, partial: _Partial) -> int:
        """Stream the rest of the block from `src` into the writer; returns the bytes received."""
        writer = partial.writer
        start = writer.written
        headers = {"Range": f"bytes={start}-"} if start else {}
        chunk_bytes = self.pool.settings.write_chunk_bytes
        got = 0
        async with self.pool.session.get(f"{src.url}/v1/blocks/{ref.block_id}", headers=headers) as resp:
            await raise_for_status(resp)
            claimed = resp.headers.get(BLAKE3_HEADER)
            if claimed is not None and claimed != ref.blake3:
                raise BlockCorrupt(
                    f"block {ref.block_id}: the source names BLAKE3 {claimed[:16]}…, the manifest another",
                    block_id=ref.block_id,
                )
            skip = 0
            if start and resp.status == 206:
                expected_range = f"bytes {start}-{ref.size - 1}/{ref.size}"
                if resp.headers.get("Content-Range") != expected_range:
                    raise BlockCorrupt(
                        f"block {ref.block_id}: asked for {expected_range}, got {resp.headers.get('Content-Range')!r}",
                        block_id=ref.block_id,
                    )
            elif start:
                skip = start  # the source ignored the Range: drop what is stored already
            length = resp.content_length
            if length is not None and length != ref.size - start + skip:
                raise BlockCorrupt(
                    f"block {ref.block_id}: {length} bytes announced, {ref.size - start + skip} expected",
                    block_id=ref.block_id,
                )
            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in resp.content.iter_any():
                n = len(chunk)
                got += n
                self._received += n
                src.note_bytes(n, self.pool.now())
                if skip:
                    drop = min(skip, n)
                    skip -= drop
                    chunk = chunk[drop:]
                    if not chunk:
                        continue
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= chunk_bytes:
                    await self._write(src, partial, pending, pending_bytes)
                    pending, pending_bytes = [], 0
            if pending:
                await self._write(src, partial, pending, pending_bytes)
        if writer.written != ref.size:
            raise ConnectionResetError(f"block {ref.block_id}: the body ended at byte {writer.written} of {ref.size}")
        return got

    async def _write(self, src: Source, partial: _Partial, pieces: list[bytes], size: int) -> None:
        partial.contributors.add(src.url)
        await asyncio.to_thread(partial.writer.write, pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self.progress is not None:
            self.progress(size)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
