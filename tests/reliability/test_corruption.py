"""Blocks that rot on an edge node's disk: detected on read (small) or by the scrubber (large), never served."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from registry.keys import catalogue_key
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN, metric
from tests.modelgen import REAL_MODEL_NAME, real_model_dir


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _rot(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


async def _setup(origin: TestServer, edge_factory: Callable[..., Any], **kw: Any) -> tuple[TestServer, Any]:
    target = HttpTarget(_url(origin), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    await target.close()
    edge = await edge_factory(origin=origin, capacity_bytes=1 << 30, **kw)
    manifest = origin.app[catalogue_key].manifest(REAL_MODEL_NAME)
    async with aiohttp.ClientSession() as s:
        for f in manifest.files:
            async with s.get(f"{_url(edge)}/{REAL_MODEL_NAME}/resolve/main/{f.path}") as resp:
                assert resp.status == 200
                await resp.read()
    return edge, manifest


async def _get_block(edge: TestServer, block_id: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(f"{_url(edge)}/v1/blocks/{block_id}") as resp:
        assert resp.status == 200
        return await resp.read()


async def test_a_small_rotten_block_is_caught_on_read_quarantined_and_refetched(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    edge, manifest = await _setup(origin_server, edge_factory, scrub_rate=None)
    store = edge.app[cache_key].store
    ref = next(r for r in manifest.file("model.safetensors").blocks if 10_000 < r.size < 1_000_000)
    _rot(store.path(ref.block_id))
    body = await _get_block(edge, ref.block_id)
    assert body == _origin_block(origin_server, ref.block_id)
    assert metric(edge, "cachenet_edge_corrupt_blocks_total", found_by="read") == 1
    assert list((store.root / "quarantine").iterdir())
    assert store.check().ok


async def test_a_large_rotten_block_is_found_by_the_scrubber_and_never_served(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    edge, manifest = await _setup(origin_server, edge_factory, scrub_rate=2e9)
    store = edge.app[cache_key].store
    ref = max(manifest.file("model.safetensors").blocks, key=lambda r: r.size)
    assert ref.size > 1 << 20
    _rot(store.path(ref.block_id))
    for _ in range(200):
        if metric(edge, "cachenet_edge_corrupt_blocks_total", found_by="scrub") >= 1:
            break
        await asyncio.sleep(0.05)
    assert metric(edge, "cachenet_edge_corrupt_blocks_total", found_by="scrub") == 1
    assert not store.has(ref.block_id)
    body = await _get_block(edge, ref.block_id)  # a miss now: fetched again and verified
    assert body == _origin_block(origin_server, ref.block_id)
    assert store.check().ok


def _origin_block(origin: TestServer, block_id: str) -> bytes:
    from registry.keys import store_key

    return origin.app[store_key].read(block_id)
