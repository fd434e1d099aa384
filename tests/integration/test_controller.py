"""The controller service with a real origin and three edge nodes: recompute, plans applied, CLI."""

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from placement.config import ControllerSettings
from placement.service import create_app as create_controller_app
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

TOPOLOGY = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_recompute_pushes_plans_and_nodes_hold_exactly_the_planned_blocks(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    target = HttpTarget(_url(origin_server), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    for i in range(5):
        folder = make_lora_adapter(tmp_path / f"l{i}", seed=i)
        await publish_path(folder, name=f"org/lora-{i}", target=target, base=REAL_MODEL_NAME, progress=False)
    await target.close()
    edges = {f"edge-{i}": await edge_factory(origin=origin_server, node_id=f"edge-{i}", capacity_bytes=256_000_000)
             for i in (1, 2, 3)}
    settings = ControllerSettings(
        topology=TOPOLOGY, origin_url=_url(origin_server), data_dir=tmp_path / "controller",
        nodes=tuple(f"{k}={_url(v)}" for k, v in edges.items()), token=OPERATOR_TOKEN,
    )
    controller = await aiohttp_server(create_controller_app(settings))
    base = _url(controller)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/placement/recompute", json={"solver": "trimcaching-gen"}) as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with s.post(f"{base}/v1/placement/recompute", json={"solver": "trimcaching-gen"}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            run = await resp.json()
        assert run["hit_ratio"] > 0 and run["inputs"]["models"] == 6
        assert all(n["pushed"] for n in run["nodes"].values())
        async with s.get(f"{base}/v1/placement") as resp:
            placement = (await resp.json())["placement"]
        for _ in range(200):
            states = []
            for edge in edges.values():
                async with s.get(f"{_url(edge)}/v1/node/plan") as resp:
                    states.append((await resp.json())["state"])
            if all(st == "applied" for st in states):
                break
            await asyncio.sleep(0.05)
        assert all(st == "applied" for st in states)
        for server, edge in edges.items():
            held = set(edge.app[cache_key].store.ids())
            assert held == set(placement["blocks"][server]), server
        async with s.get(f"{base}/v1/lookup") as resp:
            table = (await resp.json())["blocks"]
        assert set(table) == set().union(*(placement["blocks"][k] for k in edges))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachenet", "placement", "show", "--controller", base, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    shown = json.loads(out)
    assert shown["runs"][0]["run_id"] == run["run_id"] and shown["runs"][0]["solver"] == "trimcaching-gen"
