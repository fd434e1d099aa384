"""The controller goes away: edge nodes keep their last plan (across a restart) and keep serving."""

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from registry.keys import catalogue_key
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN
from tests.modelgen import make_lora_adapter


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once closed


async def test_nodes_keep_their_last_plan_and_serve_without_the_controller(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    folder = make_lora_adapter(tmp_path / "m", seed=1)
    (folder / "adapter_config.json").unlink()
    await publish_path(folder, name="org/m", target=target, progress=False)
    await target.close()
    refs = origin_server.app[catalogue_key].manifest("org/m").unique_blocks()
    controller = _dead_url()
    kw = {
        "capacity_bytes": 1 << 30,
        "node_id": "e",
        "data_dir": tmp_path / "e",
        "controller_url": controller,
        "lookup_refresh_s": 0.05,
    }
    edge = await edge_factory(origin=origin_server, **kw)
    plan = {"plan_id": "p", "blocks": [[r.block_id, r.blake3, r.size] for r in refs.values()]}
    url = str(edge.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as s:
        async with s.put(f"{url}/v1/node/plan", json=plan) as resp:
            assert resp.status == 202
        for _ in range(100):
            if edge.app[cache_key].plan.state == "applied":
                break
            await asyncio.sleep(0.05)
    await edge.close()
    again = await edge_factory(origin=origin_server, **kw)
    cache = again.app[cache_key]
    assert set(cache.plan.blocks) == set(refs) and cache.policy.pinned >= frozenset(refs)
    url = str(again.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/org/m/resolve/main/adapter_model.safetensors") as resp:
            assert resp.status == 200
            assert await resp.read() == (folder / "adapter_model.safetensors").read_bytes()
