"""The edge node's admission alone: where fetched bytes go, eviction around pins, persistence of state."""

import asyncio
from pathlib import Path

import pytest

from cachenet.blockid import digest_of
from cachenet.edge.admission import Admission
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.persistence import load_plan, save_plan
from cachenet.errors import BlockCorrupt
from cachenet.manifest import BlockRef


def _admission(tmp_path: Path, *, capacity: int, policy: str = "lru") -> Admission:
    settings = EdgeSettings(data_dir=tmp_path, capacity_bytes=capacity, policy=policy, fsync=False)
    return Admission(settings, EdgeMetrics(), clock=lambda: 0.0)


async def _put(admission: Admission, data: bytes) -> str:
    digest = digest_of(data)
    sink = await admission.open_sink(digest.block_id, len(data), digest.blake3)
    sink.write(data)
    await asyncio.to_thread(sink.commit)
    if sink.stored:
        admission.stored(digest.block_id, len(data), model=None)
    return digest.block_id


async def test_admitted_blocks_evict_unpinned_victims_only(tmp_path: Path) -> None:
    admission = _admission(tmp_path, capacity=300)
    first = await _put(admission, b"a" * 100)
    second = await _put(admission, b"b" * 100)
    admission.pins = {first: BlockRef(first, digest_of(b"a" * 100).blake3, 100)}
    admission.policy.pin([first])  # as the plan runner pins: in the policy and in `pins`
    await _put(admission, b"c" * 100)
    await _put(admission, b"d" * 100)  # needs room: the oldest unpinned block goes
    assert admission.store.has(first)
    assert not admission.store.has(second)
    assert admission.store.used_bytes == 300
    assert admission.pinned_bytes() == 100
    assert admission.store.check().ok


async def test_a_block_larger_than_the_capacity_is_spooled_and_verified(tmp_path: Path) -> None:
    admission = _admission(tmp_path, capacity=50)
    data = b"x" * 100
    digest = digest_of(data)
    sink = await admission.open_sink(digest.block_id, len(data), digest.blake3)
    assert not sink.stored
    sink.write(data)
    path = sink.commit()
    assert path.read_bytes() == data and len(admission.store) == 0
    wrong = await admission.open_sink(digest.block_id, len(data), digest.blake3)
    wrong.write(b"y" * 100)
    with pytest.raises(BlockCorrupt):
        wrong.commit()
    assert not wrong.path.exists()


async def test_policy_state_survives_a_restart_and_follows_the_store(tmp_path: Path) -> None:
    admission = _admission(tmp_path, capacity=1000)
    kept = await _put(admission, b"k" * 10)
    dropped = await _put(admission, b"d" * 10)
    admission.save_state()
    admission.store.delete(dropped)  # gone from disk while the node was down
    admission.store.close()
    again = _admission(tmp_path, capacity=1000)
    assert kept in again.policy and dropped not in again.policy
    assert len(again.policy) == len(again.store) == 1


def test_plan_file_round_trips_and_a_broken_one_is_no_plan(tmp_path: Path) -> None:
    ref = BlockRef("0" * 32, "1" * 64, 7)
    save_plan(tmp_path, "p1", {ref.block_id: ref})
    assert load_plan(tmp_path) == ("p1", {ref.block_id: ref})
    (tmp_path / "plan.json").write_text("{not json")
    assert load_plan(tmp_path) is None
