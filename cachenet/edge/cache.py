"""The edge node's block cache: a capacity-bounded store, its replacement policy, misses and plans.

A request for a block the node holds is a hit. A miss starts (or joins) one upstream
transfer per block (single flight): peers that hold the block first, asked with
`X-Cachenet-Only-If-Cached` so misses never cascade, the origin last. The bytes are
verified against the block id and, when known, its BLAKE3 digest before the block is
stored; a source that sends wrong bytes is skipped. Room is made by evicting the policy's
victims, never blocks pinned by the placement plan; a block that cannot be admitted is
streamed to its requesters from a spool file and not stored.
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from cachenet.atomicfile import atomic_write_bytes
from cachenet.blockid import BlockHasher, validate_blake3, validate_block_id
from cachenet.blockstore import BlockStore, BlockWriter
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.errors import (
    BadInput,
    BlockCorrupt,
    BlockNotFound,
    CachenetError,
    CapacityExceeded,
    UpstreamUnavailable,
)
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.protocol.headers import BLAKE3_HEADER, ONLY_IF_CACHED_HEADER
from cachenet.server.deviceapi import BlockHandle, LocalBlock
from cachenet.server.flight import Flight
from placement.replacement import ReplacementPolicy, make_policy

__all__ = ("EdgeCache", "PlanStatus")
log = logging.getLogger(__name__)

_CHUNK_BYTES: Final = 1024 * 1024
PLAN_FETCH_CONCURRENCY: Final = 4
SPOOL_LINGER_S: Final = 60.0


@dataclass
class PlanStatus:
    """The placement plan this node applies: what it pins and how far fetching got."""

    plan_id: str | None = None
    blocks: dict[str, BlockRef] = field(default_factory=dict)
    fetched: int = 0
    failed: list[str] = field(default_factory=list)
    state: str = "none"

    def to_json(self) -> dict[str, Any]:
        """The plan's status as JSON."""
        return {
            "plan_id": self.plan_id,
            "blocks": len(self.blocks),
            "bytes": sum(r.size for r in self.blocks.values()),
            "fetched": self.fetched,
            "failed": self.failed[:50],
            "state": self.state,
        }


class EdgeCache:
    """Blocks held under a capacity, fetched on a miss from peers or the origin."""

    def __init__(self, settings: EdgeSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics()
        self.store = BlockStore(
            settings.data_dir / "store", capacity_bytes=settings.capacity_bytes, fsync=settings.fsync
        )
        self.policy: ReplacementPolicy = self._load_policy(clock)
        self.plan = self._load_plan()
        self.flights: dict[str, Flight] = {}
        self.blake3_of: dict[str, str] = {}
        self.lookup: dict[str, list[str]] = {}
        self._spool = settings.data_dir / "spool"
        self._spool.mkdir(parents=True, exist_ok=True)
        for leftover in self._spool.iterdir():
            leftover.unlink(missing_ok=True)
        self._room = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._plan_task: asyncio.Task[None] | None = None
        self.metrics.capacity_bytes.set(settings.capacity_bytes)
        self._refresh_gauges()

    # -- life cycle ----------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one upstream HTTP session (opened on first use inside the event loop)."""
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=5, sock_connect=5, sock_read=self.settings.upstream_timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def start(self) -> None:
        """Resume fetching what the stored plan still lacks."""
        if self.plan.blocks and any(b not in self.store for b in self.plan.blocks):
            self._plan_task = asyncio.create_task(self._fetch_plan(self.plan))

    async def close(self) -> None:
        """Stop background work, save the policy state, close the session."""
        if self._plan_task is not None:
            self._plan_task.cancel()
            await asyncio.gather(self._plan_task, return_exceptions=True)
        self.save_state()
        if self._session is not None:
            await self._session.close()

    def save_state(self) -> None:
        """Persist the replacement policy's state (recency/frequency) for a restart."""
        atomic_write_bytes(self.settings.data_dir / "policy.json", json.dumps(self.policy.to_state()).encode())

    # -- manifests -----------------------------------------------------------------------

    def on_manifest(self, manifest: ModelManifest) -> None:
        """Learn the BLAKE3 digests of a manifest's blocks (to verify them on a miss)."""
        for ref in manifest.unique_blocks().values():
            self.blake3_of[ref.block_id] = ref.blake3

    # -- serving -------------------------------------------------------------------------

    async def open_block(
        self,
        block_id: str,
        *,
        blake3: str | None = None,
        model: str | None = None,
        only_if_cached: bool = False,
        for_plan: bool = False,
    ) -> BlockHandle:
        """The block, from the store or from one shared upstream transfer.

        `for_plan` marks fetches of the placement plan: they are not device demand, so
        they neither count as hits or misses nor refresh the block in the policy.
        """
        validate_block_id(block_id)
        blake3 = blake3 or self.blake3_of.get(block_id)
        if self.store.has(block_id) and await self._intact_on_read(block_id):
            try:
                held = LocalBlock(self.store.path(block_id), self.store.size_of(block_id), blake3)
            except BlockNotFound:
                held = None  # evicted by another request between the check and now: a miss
            if held is not None:
                if not for_plan:
                    self.policy.touch(block_id, model=model)
                    self._count(model, "hit")
                return held
        if only_if_cached:
            raise BlockNotFound(f"block {block_id} is not held by {self.settings.node_id}", block_id=block_id)
        if not for_plan:
            self._count(model, "miss")
        flight = self.flights.get(block_id)
        if flight is None:
            flight = Flight(block_id, size=None, blake3=blake3)
            self.flights[block_id] = flight
            asyncio.create_task(self._run_flight(flight, model))
        else:
            self.metrics.singleflight_merged.inc()
        await flight.wait_started()
        if (
            flight.trusted
            and not flight.done
            and (flight.size >= self.settings.cut_through_min_bytes or not flight.stored)
        ):
            return flight
        path = await flight.wait()
        return LocalBlock(path, flight.size, flight.blake3)

    async def _intact_on_read(self, block_id: str) -> bool:
        """Small blocks are re-hashed on every read (cheap); large ones are left to the scrubber."""
        try:
            size = self.store.size_of(block_id)
        except BlockNotFound:
            return False
        if size > self.settings.verify_on_read_max_bytes:
            return True
        try:
            if await asyncio.to_thread(self.store.verify, block_id):
                return True
        except BlockNotFound:
            return False  # evicted meanwhile: a miss, not a corruption
        self._on_corrupt(block_id, "read")
        return False

    def _on_corrupt(self, block_id: str, found_by: str) -> None:
        # `BlockStore.verify` already moved the file to quarantine/; forget it and count it.
        log.error("block %s was corrupt on disk (found by %s); quarantined, will be re-fetched", block_id, found_by)
        self.metrics.corrupt_blocks.labels(found_by).inc()
        self.policy.remove(block_id)
        self._refresh_gauges()

    async def scrub_forever(self, *, pause_s: float = 10.0) -> None:
        """Re-verify every stored block at `scrub_rate` bytes/s; re-fetch corrupt pinned blocks."""
        rate = self.settings.scrub_rate
        if rate is None:
            return
        while True:
            for block_id in self.store.ids():
                if not self.store.has(block_id):
                    continue
                size = self.store.size_of(block_id)
                try:
                    intact = await asyncio.to_thread(self.store.verify, block_id)
                except BlockNotFound:
                    continue  # evicted since `ids()`: the scrubber must not die of it
                self.metrics.scrubbed_bytes.inc(size)
                if not intact:
                    self._on_corrupt(block_id, "scrub")
                    ref = self.plan.blocks.get(block_id)
                    if ref is not None:
                        try:
                            handle = await self.open_block(block_id, blake3=ref.blake3, for_plan=True)
                            if isinstance(handle, Flight):
                                await handle.wait()
                        except CachenetError as e:
                            log.warning("could not re-fetch pinned block %s: %s", block_id, e)
                await asyncio.sleep(size / rate)
            await asyncio.sleep(pause_s)

    def _count(self, model: str | None, result: str) -> None:
        self.metrics.block_requests.labels(result).inc()
        if model is not None:
            self.metrics.model_requests.labels(model, result).inc()

    # -- upstream transfers --------------------------------------------------------------

    async def _run_flight(self, flight: Flight, model: str | None) -> None:
        try:
            path = await self._fetch(flight, model)
        except BaseException as e:  # every failure must reach the waiting requesters
            if not isinstance(e, CachenetError):
                e = UpstreamUnavailable(f"block {flight.block_id}: {e!r}", block_id=flight.block_id)
            await flight.finish(None, e)
            if not isinstance(e, CachenetError | asyncio.CancelledError):
                raise
        else:
            await flight.finish(path, None)
        finally:
            self.flights.pop(flight.block_id, None)

    def sources(self, block_id: str) -> list[tuple[str, str]]:
        """(kind, URL) to try for a block: peers that hold it, then the origin."""
        me = self.settings.url
        holders = [u for u in self.lookup.get(block_id, []) if u.rstrip("/") != me]
        peers = holders if self.lookup else list(self.settings.peers)
        return [("peer", p.rstrip("/")) for p in peers] + [("origin", self.settings.origin_url.rstrip("/"))]

    async def _fetch(self, flight: Flight, model: str | None) -> Path:
        errors: list[str] = []
        for kind, url in self.sources(flight.block_id):
            try:
                return await self._fetch_from(flight, kind, url, model)
            except CapacityExceeded:
                raise  # our disk is full: another source would not help
            except BlockCorrupt as e:
                reason = "corrupt"
                log.warning("refused block %s from %s %s: %s", flight.block_id, kind, url, e)
            except (BlockNotFound, aiohttp.ClientResponseError):
                reason = "not_found"
            except (aiohttp.ClientError, TimeoutError, OSError, UpstreamUnavailable) as e:
                reason = "unreachable"
                log.warning("block %s: %s %s failed: %r", flight.block_id, kind, url, e)
            self.metrics.upstream_errors.labels(kind, reason).inc()
            errors.append(f"{kind} {url}: {reason}")
        if all(e.endswith("not_found") for e in errors):
            raise BlockNotFound(
                f"block {flight.block_id} is held by no peer and not by the origin", block_id=flight.block_id
            )
        raise UpstreamUnavailable(
            f"block {flight.block_id} could not be fetched: {'; '.join(errors)}", block_id=flight.block_id
        )

    async def _fetch_from(self, flight: Flight, kind: str, url: str, model: str | None) -> Path:
        headers = {ONLY_IF_CACHED_HEADER: "1"} if kind == "peer" else {}
        async with self.session.get(f"{url}/v1/blocks/{flight.block_id}", headers=headers) as resp:
            try:
                size, sink, path = await self._receive(flight, kind, url, resp)
            except BaseException:
                # The body was not read to its end: the connection must not go back to the
                # pool, or its next request would read this body's leftover bytes.
                resp.close()
                raise
        self.metrics.bytes_fetched.labels(kind).inc(size)
        if sink.stored:
            self.policy.insert(flight.block_id, size, models=[model] if model else [])
            self._refresh_gauges()
        else:
            # Readers open the spool file when they start; give late ones time, then drop it.
            asyncio.get_running_loop().call_later(SPOOL_LINGER_S, path.unlink, True)
        return path

    async def _receive(
        self, flight: Flight, kind: str, url: str, resp: aiohttp.ClientResponse
    ) -> tuple[int, "_Sink", Path]:
        """Stream one upstream response into a sink, verifying it; returns (size, sink, path)."""
        if resp.status == 404:
            raise BlockNotFound(f"{url} does not hold {flight.block_id}")
        if resp.status != 200 or resp.content_length is None:
            raise UpstreamUnavailable(f"{url} answered {resp.status} for block {flight.block_id}")
        size = resp.content_length
        if flight.blake3 is None and kind == "origin":
            # The origin is the root of trust: its catalogue's digest is accepted.
            given = resp.headers.get(BLAKE3_HEADER)
            flight.blake3 = validate_blake3(given) if given else None
        if flight.blake3 is None and kind != "origin":
            raise UpstreamUnavailable(f"no BLAKE3 known for {flight.block_id}; only the origin is trusted")
        sink = await self._open_sink(flight.block_id, size, flight.blake3)
        flight.stored = sink.stored
        await flight.begin_attempt(sink.path, size, trusted=kind == "origin")
        try:
            written = 0
            async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
                if written + len(chunk) > size:
                    raise BlockCorrupt(f"{url} sent more than {size} bytes for {flight.block_id}")
                await asyncio.to_thread(sink.write, chunk)
                written += len(chunk)
                await flight.progress(written)
            if written != size:
                raise UpstreamUnavailable(f"{url} sent {written} of {size} bytes for {flight.block_id}")
            path = await asyncio.to_thread(sink.commit)
        except BaseException:
            sink.abort()
            raise
        return size, sink, path

    async def _open_sink(self, block_id: str, size: int, blake3: str | None) -> "_Sink":
        async with self._room:
            if self.policy.admit(block_id, size) and await self._make_room(size):
                try:
                    writer = self.store.writer(block_id, blake3=blake3, expected_size=size)
                    return _Sink(writer=writer, store=self.store)
                except CapacityExceeded:
                    pass
        self.metrics.not_admitted.inc()
        return _Sink(spool=_SpoolFile(self._spool / f"{block_id}.{uuid.uuid4().hex[:8]}", block_id, blake3, size))

    async def _make_room(self, size: int) -> bool:
        """Evict unpinned victims so that `size` more bytes fit; False when that is impossible."""
        free = self.store.free_bytes
        if free is not None and free >= size:
            return True
        # Blocks a worker thread committed whose flight has not yet told the policy (commit and
        # `policy.insert` are on either side of an await) count too, or too little is evicted.
        untracked = max(0, self.store.used_bytes - self.policy.used_bytes)
        try:
            victims = self.policy.victims(
                self.store.capacity_bytes - (free or 0) - self.store.used_bytes + size + untracked
            )
        except CapacityExceeded:
            return False
        for block_id in victims:
            if block_id in self.plan.blocks:
                continue
            await asyncio.to_thread(self.store.delete, block_id)
            self.policy.remove(block_id)
            self.metrics.evictions.labels(self.settings.policy).inc()
            log.debug("evicted %s", block_id)
        self._refresh_gauges()
        free = self.store.free_bytes
        return free is None or free >= size

    # -- placement plans -----------------------------------------------------------------

    async def apply_plan(self, plan_id: str, refs: Iterable[BlockRef]) -> PlanStatus:
        """Pin exactly `refs`, release what the previous plan pinned, fetch what is missing."""
        blocks = {r.block_id: r for r in refs}
        total = sum(r.size for r in blocks.values())
        if total > self.settings.capacity_bytes:
            raise CapacityExceeded(
                f"plan {plan_id} needs {total} bytes; node {self.settings.node_id} has {self.settings.capacity_bytes}",
                node_id=self.settings.node_id,
            )
        for r in blocks.values():
            self.blake3_of.setdefault(r.block_id, r.blake3)
        released = [b for b in self.plan.blocks if b not in blocks]
        self.policy.unpin(released)
        self.policy.pin(blocks)
        if self._plan_task is not None:
            self._plan_task.cancel()
            await asyncio.gather(self._plan_task, return_exceptions=True)
        self.plan = PlanStatus(plan_id, blocks, state="fetching")
        self._save_plan()
        self._plan_task = asyncio.create_task(self._fetch_plan(self.plan))
        self._refresh_gauges()
        log.info("plan %s: %d blocks pinned, %d released", plan_id, len(blocks), len(released))
        return self.plan

    async def _fetch_plan(self, plan: PlanStatus) -> None:
        semaphore = asyncio.Semaphore(PLAN_FETCH_CONCURRENCY)

        async def one(ref: BlockRef) -> None:
            async with semaphore:
                try:
                    handle = await self.open_block(ref.block_id, blake3=ref.blake3, for_plan=True)
                    if isinstance(handle, Flight):
                        await handle.wait()
                    if not self.store.has(ref.block_id):  # served from a spool file, not held
                        raise CapacityExceeded(
                            f"block {ref.block_id} could not be admitted", node_id=self.settings.node_id
                        )
                    plan.fetched += 1
                except CachenetError as e:
                    plan.failed.append(ref.block_id)
                    log.warning("plan %s: block %s not fetched: %s", plan.plan_id, ref.block_id, e)

        await asyncio.gather(*(one(r) for r in plan.blocks.values()))
        plan.state = "applied" if not plan.failed else "incomplete"
        self._refresh_gauges()

    # -- state ---------------------------------------------------------------------------

    def pinned_bytes(self) -> int:
        """Bytes of pinned blocks the store holds."""
        return sum(r.size for b, r in self.plan.blocks.items() if self.store.has(b))

    def _refresh_gauges(self) -> None:
        self.metrics.used_bytes.set(self.store.used_bytes)
        self.metrics.pinned_bytes.set(self.pinned_bytes())

    def _load_policy(self, clock: Callable[[], float]) -> ReplacementPolicy:
        path = self.settings.data_dir / "policy.json"
        cls = type(make_policy(self.settings.policy, capacity_bytes=self.settings.capacity_bytes))
        policy: ReplacementPolicy
        try:
            policy = cls.from_state(
                json.loads(path.read_text()), capacity_bytes=self.settings.capacity_bytes, clock=clock
            )
        except (OSError, ValueError, BadInput, KeyError, TypeError):
            policy = make_policy(self.settings.policy, capacity_bytes=self.settings.capacity_bytes, clock=clock)
        held = self.store.sizes()
        for block_id in [b for b in list(_policy_ids(policy)) if b not in held]:
            policy.remove(block_id)
        for block_id, size in held.items():
            if block_id not in policy:
                policy.insert(block_id, size)
        return policy

    def _load_plan(self) -> PlanStatus:
        path = self.settings.data_dir / "plan.json"
        # plan.json is the truth for pins: policy.json is saved only now and then, so after a
        # crash it may still pin an earlier plan's blocks, which could then never be evicted.
        self.policy.unpin(self.policy.pinned)
        try:
            doc = json.loads(path.read_text())
            refs = {b[0]: BlockRef(b[0], b[1], b[2]) for b in doc["blocks"]}
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return PlanStatus()
        self.policy.pin(refs)
        return PlanStatus(doc.get("plan_id"), refs, state="restored")

    def _save_plan(self) -> None:
        doc = {
            "plan_id": self.plan.plan_id,
            "blocks": [[r.block_id, r.blake3, r.size] for r in self.plan.blocks.values()],
        }
        atomic_write_bytes(self.settings.data_dir / "plan.json", json.dumps(doc).encode())


def _policy_ids(policy: ReplacementPolicy) -> list[str]:
    state = policy.to_state()
    return [str(entry[0]) for entry in state.get("blocks", [])]


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


class _Sink:
    """Where a fetched block's bytes go: the store (admitted) or a spool file (not admitted)."""

    def __init__(
        self, *, writer: BlockWriter | None = None, store: BlockStore | None = None, spool: _SpoolFile | None = None
    ) -> None:
        self.writer, self.store, self.spool = writer, store, spool
        self.stored = writer is not None
        self.path: Path = writer.temp_path if writer is not None else spool.path  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
        else:
            assert self.spool is not None
            self.spool.write(data)

    def commit(self) -> Path:
        if self.writer is not None:
            assert self.store is not None
            self.writer.commit()
            return self.store.path(self.writer.block_id)
        assert self.spool is not None
        return self.spool.commit()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        elif self.spool is not None:
            self.spool.abort()
