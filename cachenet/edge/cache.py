"""The edge node's block cache: serving held blocks, and fetching, admitting and pinning the rest.

A request for a block the node holds is a hit. A miss starts (or joins) one upstream
transfer per block (`upstream.UpstreamFetcher`: peers first, the origin last); its bytes
are verified before the block is stored (`admission.Admission`: the capacity-bounded store,
its replacement policy and the plan's pins), and a block that cannot be admitted is streamed
to its requesters from a spool file. Plans (`plans.PlanRunner`) pin blocks and fetch them;
the scrubber (`scrub`) re-verifies what is held. `EdgeCache` ties these together and owns
their background tasks.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp

from cachenet.blockid import validate_block_id
from cachenet.blockstore import BlockStore
from cachenet.edge.admission import Admission
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.plans import PlanRunner, PlanStatus
from cachenet.edge.scrub import scrub_forever
from cachenet.edge.upstream import UpstreamFetcher
from cachenet.errors import BlockNotFound, CapacityExceeded
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.protocol.delivery import DeliverySchedule
from cachenet.server.deviceapi import BlockHandle, LocalBlock
from cachenet.server.flight import Flight
from placement.replacement import ReplacementPolicy

__all__ = ("EdgeCache", "PlanStatus")
log = logging.getLogger(__name__)


class EdgeCache:
    """Blocks held under a capacity, fetched on a miss from peers or the origin."""

    def __init__(self, settings: EdgeSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics()
        self.admission = Admission(settings, self.metrics, clock=clock)
        self.upstream = UpstreamFetcher(settings, self.admission, self.metrics)
        self.plans = PlanRunner(settings, self.admission, self._fetch_for_plan)
        self.blake3_of: dict[str, str] = {}
        self.admission.refresh_gauges()

    @property
    def store(self) -> BlockStore:
        """The node's block store."""
        return self.admission.store

    @property
    def policy(self) -> ReplacementPolicy:
        """The node's replacement policy."""
        return self.admission.policy

    @property
    def plan(self) -> PlanStatus:
        """The plan being applied."""
        return self.plans.plan

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one upstream HTTP session."""
        return self.upstream.session

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume fetching what the stored plan still lacks."""
        self.plans.resume()

    async def close(self) -> None:
        """Stop background work, save the policy state, close the session."""
        await self.plans.close()
        await self.upstream.close()
        self.save_state()

    def save_state(self) -> None:
        """Persist the replacement policy's state (recency/frequency) for a restart."""
        self.admission.save_state()

    async def scrub_forever(self, *, pause_s: float = 10.0) -> None:
        """Re-verify every stored block at `scrub_rate` bytes/s; re-fetch corrupt pinned blocks."""
        await scrub_forever(
            self.admission, rate=self.settings.scrub_rate, refetch=self._fetch_for_plan, pause_s=pause_s
        )

    # -- manifests and plans -------------------------------------------------------------

    def on_manifest(self, manifest: ModelManifest) -> None:
        """Learn the BLAKE3 digests of a manifest's blocks (to verify them on a miss)."""
        for ref in manifest.unique_blocks().values():
            self.blake3_of[ref.block_id] = ref.blake3

    async def apply_plan(
        self, plan_id: str, refs: Iterable[BlockRef], *, schedule: DeliverySchedule | None = None
    ) -> PlanStatus:
        """Pin exactly `refs`, release what the previous plan pinned, fetch what is missing (along `schedule`)."""
        refs = list(refs)
        for r in refs:
            self.blake3_of.setdefault(r.block_id, r.blake3)
        await self.plans.close()
        self.upstream.set_schedule(schedule)
        status = await self.plans.apply(plan_id, refs)
        status.received = self.upstream.received
        return status

    def fetching(self) -> list[str]:
        """Blocks being fetched now."""
        return sorted(self.upstream.flights)

    def pinned_bytes(self) -> int:
        """Bytes of pinned blocks the store holds."""
        return self.admission.pinned_bytes()

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
        store = self.store
        if store.has(block_id) and await self._intact_on_read(block_id):
            try:
                held = LocalBlock(store.path(block_id), store.size_of(block_id), blake3)
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
        flight = self.upstream.flight(block_id, blake3=blake3, model=model)
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
        self.admission.forget_corrupt(block_id, "read")
        return False

    async def _fetch_for_plan(self, ref: BlockRef) -> None:
        handle = await self.open_block(ref.block_id, blake3=ref.blake3, for_plan=True)
        if isinstance(handle, Flight):
            await handle.wait()
        if not self.store.has(ref.block_id):  # served from a spool file, not held
            raise CapacityExceeded(f"block {ref.block_id} could not be admitted", node_id=self.settings.node_id)

    def _count(self, model: str | None, result: str) -> None:
        self.metrics.block_requests.labels(result).inc()
        if model is not None:
            self.metrics.model_requests.labels(model, result).inc()
