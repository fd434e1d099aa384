"""The placement plan an edge node applies: pin exactly the plan's blocks, release the rest, fetch what is missing.

The plan on disk (plan.json) is the truth for pins: it is saved when a plan is applied and
restored at start, and a restored plan's missing blocks are fetched again.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from cachenet.edge.admission import Admission
from cachenet.edge.config import EdgeSettings
from cachenet.edge.persistence import load_plan, save_plan
from cachenet.errors import BadInput, CachenetError
from cachenet.manifest import BlockRef
from cachenet.protocol.node import PlanProgress

__all__ = ("PLAN_FETCH_CONCURRENCY", "PlanRunner", "PlanStatus")
log = logging.getLogger(__name__)

PLAN_FETCH_CONCURRENCY: Final = 4

# Fetches one planned block and waits until it is held (raises `CachenetError` otherwise).
FetchForPlan = Callable[[BlockRef], Awaitable[None]]


@dataclass
class PlanStatus:
    """The placement plan this node applies: what it pins and how far fetching got."""

    plan_id: str | None = None
    blocks: dict[str, BlockRef] = field(default_factory=dict)
    fetched: int = 0
    failed: list[str] = field(default_factory=list)
    state: str = "none"

    def progress(self) -> PlanProgress:
        """The plan's status as a message."""
        return PlanProgress(
            self.plan_id,
            len(self.blocks),
            sum(r.size for r in self.blocks.values()),
            self.fetched,
            self.failed[:50],
            self.state,
        )


class PlanRunner:
    """Applies plans: pins in the policy, the plan file, and one background task fetching the plan's blocks."""

    def __init__(self, settings: EdgeSettings, admission: Admission, fetch: FetchForPlan) -> None:
        self.settings = settings
        self.admission = admission
        self._fetch_one = fetch
        self._task: asyncio.Task[None] | None = None
        self.plan = self._restore()

    def resume(self) -> None:
        """Start fetching what the restored plan still lacks."""
        store = self.admission.store
        if self.plan.blocks and any(b not in store for b in self.plan.blocks):
            self._task = asyncio.create_task(self._fetch_plan(self.plan))

    async def apply(self, plan_id: str, refs: Iterable[BlockRef]) -> PlanStatus:
        """Pin exactly `refs`, release what the previous plan pinned, fetch what is missing."""
        blocks = {r.block_id: r for r in refs}
        total = sum(r.size for r in blocks.values())
        if total > self.settings.capacity_bytes:
            # The plan is wrong for this node (a client error), not the node out of room: 422, not 507.
            raise BadInput(
                f"plan {plan_id} needs {total} bytes; node {self.settings.node_id} has {self.settings.capacity_bytes}",
                node_id=self.settings.node_id,
            )
        policy = self.admission.policy
        released = [b for b in self.plan.blocks if b not in blocks]
        policy.unpin(released)
        policy.pin(blocks)
        await self.close()
        self.plan = PlanStatus(plan_id, blocks, state="fetching")
        self.admission.pins = blocks
        save_plan(self.settings.data_dir, plan_id, blocks)
        self._task = asyncio.create_task(self._fetch_plan(self.plan))
        self.admission.refresh_gauges()
        log.info("plan %s: %d blocks pinned, %d released", plan_id, len(blocks), len(released))
        return self.plan

    async def close(self) -> None:
        """Stop fetching the current plan."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _restore(self) -> PlanStatus:
        policy = self.admission.policy
        # plan.json is the truth for pins: policy.json is saved only now and then, so after a
        # crash it may still pin an earlier plan's blocks, which could then never be evicted.
        policy.unpin(policy.pinned)
        saved = load_plan(self.settings.data_dir)
        if saved is None:
            return PlanStatus()
        plan_id, refs = saved
        policy.pin(refs)
        self.admission.pins = refs
        return PlanStatus(plan_id, refs, state="restored")

    async def _fetch_plan(self, plan: PlanStatus) -> None:
        semaphore = asyncio.Semaphore(PLAN_FETCH_CONCURRENCY)

        async def one(ref: BlockRef) -> None:
            async with semaphore:
                try:
                    await self._fetch_one(ref)
                    plan.fetched += 1
                except CachenetError as e:
                    plan.failed.append(ref.block_id)
                    log.warning("plan %s: block %s not fetched: %s", plan.plan_id, ref.block_id, e)

        await asyncio.gather(*(one(r) for r in plan.blocks.values()))
        plan.state = "applied" if not plan.failed else "incomplete"
        self.admission.refresh_gauges()
