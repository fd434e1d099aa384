"""Edge nodes with a real origin on loopback: misses, single flight, peers, capacity, plans, liars."""

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from cachenet.manifest import ModelManifest
from registry.chunking import list_folder_files
from registry.keys import catalogue_key
from registry.publish import HttpTarget, PublishReport, publish_path
from tests.conftest import OPERATOR_TOKEN, metric
from tests.fakes import lying_peer_app
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def _publish(origin: TestServer, path: Path, name: str, **kw: Any) -> PublishReport:
    target = HttpTarget(_url(origin), OPERATOR_TOKEN)
    try:
        return await publish_path(path, name=name, target=target, progress=False, **kw)
    finally:
        await target.close()


async def _pull(node: TestServer, name: str, files: list[str] | None = None) -> dict[str, str]:
    """Download a model's files through a node's Hugging Face route; path → SHA-256."""
    out = {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{_url(node)}/v1/models/{name}/revisions/main") as resp:
            assert resp.status == 200, await resp.text()
            manifest = ModelManifest.from_json(await resp.json())
        for f in manifest.files:
            if files is not None and f.path not in files:
                continue
            async with s.get(f"{_url(node)}/{name}/resolve/main/{f.path}") as resp:
                assert resp.status == 200, await resp.text()
                out[f.path] = hashlib.sha256(await resp.read()).hexdigest()
    return out


def _originals(folder: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for p, rel in list_folder_files(folder)}


async def test_pull_through_an_empty_edge_then_a_second_pull_fetches_nothing(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    assert await _pull(edge, REAL_MODEL_NAME) == _originals(real_model_dir())
    fetched = metric(edge, "cachenet_edge_bytes_fetched_total", source="origin")
    assert fetched > 80_000_000
    assert await _pull(edge, REAL_MODEL_NAME) == _originals(real_model_dir())
    assert metric(edge, "cachenet_edge_bytes_fetched_total", source="origin") == fetched
    assert metric(edge, "cachenet_edge_block_requests_total", result="hit") >= 117
    assert edge.app[cache_key].store.check().ok


async def test_fifty_concurrent_requests_for_a_missing_block_make_one_upstream_fetch(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    manifest = origin_server.app[catalogue_key].manifest(REAL_MODEL_NAME)
    ref = max(manifest.file("model.safetensors").blocks, key=lambda r: r.size)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    async with aiohttp.ClientSession() as s:

        async def get() -> bytes:
            async with s.get(f"{_url(edge)}/v1/blocks/{ref.block_id}") as resp:
                assert resp.status == 200
                return await resp.read()

        bodies = await asyncio.gather(*(get() for _ in range(50)))
    assert {hashlib.sha256(b).hexdigest() for b in bodies} == {hashlib.sha256(bodies[0]).hexdigest()}
    assert len(bodies[0]) == ref.size
    assert metric(edge, "cachenet_edge_bytes_fetched_total", source="origin") == ref.size
    assert metric(edge, "cachenet_edge_singleflight_merged_total") == 49


async def test_a_miss_is_served_from_a_peer_rather_than_the_origin(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    a = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    await _pull(a, REAL_MODEL_NAME)
    b = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, peers=(_url(a),))
    assert await _pull(b, REAL_MODEL_NAME) == _originals(real_model_dir())
    assert metric(b, "cachenet_edge_bytes_fetched_total", source="origin") == 0
    assert metric(b, "cachenet_edge_bytes_fetched_total", source="peer") > 80_000_000


async def test_wrong_bytes_from_a_peer_are_refused_and_fetched_elsewhere(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any]
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    liar = await aiohttp_server(lying_peer_app(_url(origin_server)))
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, peers=(_url(liar),))
    assert await _pull(edge, REAL_MODEL_NAME, ["model.safetensors", "config.json"]) == {
        k: v for k, v in _originals(real_model_dir()).items() if k in ("model.safetensors", "config.json")
    }
    assert metric(edge, "cachenet_edge_upstream_errors_total", source="peer", reason="corrupt") > 0
    assert edge.app[cache_key].store.check().ok


async def test_capacity_is_never_exceeded_under_an_overflowing_sequence(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    for i in range(6):
        await _publish(
            origin_server, make_lora_adapter(tmp_path / f"l{i}", seed=i), f"org/lora-{i}", base=REAL_MODEL_NAME
        )
    capacity = 30_000_000  # a third of the base model
    edge = await edge_factory(origin=origin_server, capacity_bytes=capacity, policy="lru")
    store = edge.app[cache_key].store
    for i in range(6):
        await _pull(edge, f"org/lora-{i}")
        assert store.used_bytes <= capacity
    # the base does not fit: it is still served, byte-identical, cut-through from the spool
    assert await _pull(edge, REAL_MODEL_NAME) == _originals(real_model_dir())
    assert store.used_bytes <= capacity
    assert metric(edge, "cachenet_edge_evictions_total") > 0
    assert store.check().ok


async def test_sharing_aware_policy_keeps_the_backbone_that_plain_lru_evicts(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    for i in range(20):
        await _publish(
            origin_server, make_lora_adapter(tmp_path / f"l{i}", seed=i), f"org/lora-{i}", base=REAL_MODEL_NAME
        )
    base_blocks = origin_server.app[catalogue_key].manifest(REAL_MODEL_NAME).unique_blocks()
    base_bytes = sum(r.size for r in base_blocks.values())
    capacity = base_bytes + 4 * 300_000  # the backbone plus a few adapters
    held = {}
    for policy in ("lru", "sharing-lru", "sharing-lfu"):
        edge = await edge_factory(origin=origin_server, capacity_bytes=capacity, policy=policy)
        await _pull(edge, REAL_MODEL_NAME)  # first device: the whole base
        for i in range(20):  # later devices hold the base and fetch only their adapter
            await _pull(edge, f"org/lora-{i}")
        store = edge.app[cache_key].store
        assert store.used_bytes <= capacity
        held[policy] = sum(1 for b in base_blocks if store.has(b))
    assert held["sharing-lru"] == held["sharing-lfu"] == len(base_blocks)
    assert held["lru"] < len(base_blocks)


async def test_plan_pins_blocks_against_replacement_until_released(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    for i in range(8):
        folder = make_lora_adapter(tmp_path / f"l{i}", seed=i)
        (folder / "adapter_config.json").unlink()  # plain models of ~300 kB each
        await _publish(origin_server, folder, f"org/a{i}")
    catalogue = origin_server.app[catalogue_key]
    pinned = catalogue.manifest("org/a0").unique_blocks()
    capacity = 3 * 300_000
    edge = await edge_factory(origin=origin_server, capacity_bytes=capacity, policy="lru")
    plan = {"plan_id": "p1", "blocks": [[r.block_id, r.blake3, r.size] for r in pinned.values()]}
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{_url(edge)}/v1/node/plan", json=plan) as resp:
            assert resp.status == 401
        async with s.put(f"{_url(edge)}/v1/node/plan", json=plan, headers=headers) as resp:
            assert resp.status == 202
        for _ in range(100):
            async with s.get(f"{_url(edge)}/v1/node/plan") as resp:
                if (await resp.json())["state"] == "applied":
                    break
            await asyncio.sleep(0.05)
        store = edge.app[cache_key].store
        assert all(store.has(b) for b in pinned)
        for i in range(1, 8):
            await _pull(edge, f"org/a{i}")
            assert all(store.has(b) for b in pinned), "replacement evicted a pinned block"
            assert store.used_bytes <= capacity
        async with s.get(f"{_url(edge)}/v1/node/state") as resp:
            state = await resp.json()
            assert state["pinned_bytes"] == sum(r.size for r in pinned.values())
        async with s.put(f"{_url(edge)}/v1/node/plan", json={"plan_id": "p2", "blocks": []}, headers=headers) as resp:
            assert resp.status == 202
        for i in range(1, 8):
            await _pull(edge, f"org/a{i}")
    assert not all(store.has(b) for b in pinned), "released blocks should have become evictable"


async def test_restart_keeps_cached_blocks(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    first = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, node_id="e", data_dir=tmp_path / "e")
    await _pull(first, REAL_MODEL_NAME)
    used = first.app[cache_key].store.used_bytes
    await first.close()
    second = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, node_id="e", data_dir=tmp_path / "e")
    assert second.app[cache_key].store.used_bytes == used
    assert len(second.app[cache_key].policy) == len(second.app[cache_key].store)
    await _pull(second, REAL_MODEL_NAME)
    assert metric(second, "cachenet_edge_bytes_fetched_total", source="origin") == 0


async def test_a_moved_tag_is_picked_up_after_revalidation(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    first = make_lora_adapter(tmp_path / "v1", seed=1)
    (first / "adapter_config.json").unlink()
    r1 = await _publish(origin_server, first, "org/moving")
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, manifest_ttl_s=0.0)
    assert await _pull(edge, "org/moving") == _originals(first)
    second = make_lora_adapter(tmp_path / "v2", seed=2)
    (second / "adapter_config.json").unlink()
    r2 = await _publish(origin_server, second, "org/moving")
    assert r1.revision != r2.revision
    assert await _pull(edge, "org/moving") == _originals(second)
    async with aiohttp.ClientSession() as s:  # the old commit stays addressable
        async with s.get(f"{_url(edge)}/v1/models/org/moving/revisions/{r1.revision}") as resp:
            assert (await resp.json())["revision"] == r1.revision


async def test_egress_rate_caps_the_sending_rate(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    import time

    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    rate = 40_000_000  # bytes/s
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, egress_rate=float(rate))
    await _pull(edge, REAL_MODEL_NAME, ["model.safetensors"])  # warm: the miss path is not what is paced
    started = time.perf_counter()
    await _pull(edge, REAL_MODEL_NAME, ["model.safetensors"])
    elapsed = time.perf_counter() - started
    size = (real_model_dir() / "model.safetensors").stat().st_size
    assert elapsed >= 0.8 * size / rate


async def test_bytes_saved_by_sharing_are_reported(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    for i in range(2):
        await _publish(
            origin_server, make_lora_adapter(tmp_path / f"l{i}", seed=i), f"org/lora-{i}", base=REAL_MODEL_NAME
        )
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    await _pull(edge, REAL_MODEL_NAME)
    assert metric(edge, "cachenet_edge_sharing_saved_bytes") == 0  # one model: nothing shared yet
    for i in range(2):
        await _pull(edge, f"org/lora-{i}")
    base_bytes = sum(
        r.size for r in origin_server.app[catalogue_key].manifest(REAL_MODEL_NAME).unique_blocks().values()
    )
    # each LoRA model stored whole would repeat the base; the adapters share their config and header
    saved = metric(edge, "cachenet_edge_sharing_saved_bytes")
    assert 2 * base_bytes <= saved < 2 * base_bytes + 100_000
