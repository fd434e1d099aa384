"""The plan runner alone: pins, the plan file, fetching through the callback it is given."""

import asyncio
from pathlib import Path

import pytest

from cachenet.blockid import digest_of
from cachenet.edge.admission import Admission
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.plans import PlanRunner
from cachenet.errors import BadInput, BlockNotFound
from cachenet.manifest import BlockRef

BLOCKS = {digest_of(bytes([i]) * 64): bytes([i]) * 64 for i in range(6)}


def _runner(tmp_path: Path, *, missing: frozenset[str] = frozenset()) -> tuple[PlanRunner, Admission]:
    settings = EdgeSettings(data_dir=tmp_path, capacity_bytes=10_000, policy="lru", fsync=False)
    admission = Admission(settings, EdgeMetrics(), clock=lambda: 0.0)

    async def fetch(ref: BlockRef) -> None:
        # Stands in for the upstream: the bytes come from the test's own table.
        if ref.block_id in missing:
            raise BlockNotFound(f"{ref.block_id} is nowhere", block_id=ref.block_id)
        data = next(d for g, d in BLOCKS.items() if g.block_id == ref.block_id)
        await asyncio.to_thread(admission.store.put, ref.block_id, data, blake3=ref.blake3)
        admission.stored(ref.block_id, ref.size, model=None)

    return PlanRunner(settings, admission, fetch), admission


async def _settled(runner: PlanRunner) -> None:
    for _ in range(200):
        if runner.plan.state not in ("fetching", "restored"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"plan still {runner.plan.state}")


async def test_a_plan_pins_and_fetches_its_blocks_and_releases_the_previous_ones(tmp_path: Path) -> None:
    runner, admission = _runner(tmp_path)
    refs = [BlockRef(g.block_id, g.blake3, g.size) for g in BLOCKS]
    await runner.apply("p1", refs[:4])
    await _settled(runner)
    assert runner.plan.state == "applied" and runner.plan.fetched == 4
    assert admission.policy.pinned == {r.block_id for r in refs[:4]}
    await runner.apply("p2", refs[2:])
    await _settled(runner)
    assert admission.policy.pinned == {r.block_id for r in refs[2:]}
    assert set(admission.pins) == {r.block_id for r in refs[2:]}
    await runner.close()


async def test_failed_blocks_are_reported_and_a_restart_restores_the_pins(tmp_path: Path) -> None:
    refs = [BlockRef(g.block_id, g.blake3, g.size) for g in BLOCKS]
    runner, admission = _runner(tmp_path, missing=frozenset({refs[0].block_id}))
    await runner.apply("p1", refs[:3])
    await _settled(runner)
    assert runner.plan.state == "incomplete" and runner.plan.failed == [refs[0].block_id]
    admission.store.close()
    again, admission = _runner(tmp_path)
    assert again.plan.state == "restored" and again.plan.plan_id == "p1"
    assert admission.policy.pinned == {r.block_id for r in refs[:3]}
    again.resume()  # the block that failed is fetched now
    await _settled(again)
    assert again.plan.state == "applied" and admission.store.has(refs[0].block_id)


async def test_a_plan_larger_than_the_node_is_refused_as_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    runner, admission = _runner(tmp_path)
    refs = [BlockRef(g.block_id, g.blake3, g.size) for g in BLOCKS]
    await runner.apply("p1", refs[:2])
    await _settled(runner)
    too_big = [*refs[2:], BlockRef("f" * 32, "0" * 64, 20_000)]
    with pytest.raises(BadInput, match="needs"):  # a wrong plan is the sender's error (422), not a full disk (507)
        await runner.apply("p2", too_big)
    assert runner.plan.plan_id == "p1" and admission.policy.pinned == {r.block_id for r in refs[:2]}
    await runner.close()
