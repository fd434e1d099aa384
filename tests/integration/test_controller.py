"""The controller service with a real origin and three edge nodes: recompute, plans applied, CLI, runs."""

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from placement.app import UNSAVED_RUNS_FILE, controller_key
from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings
from placement.controller import RunSummary
from registry.app import create_app as create_origin_app
from registry.config import OriginSettings
from registry.keys import catalogue_key
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
    edges = {
        f"edge-{i}": await edge_factory(origin=origin_server, node_id=f"edge-{i}", capacity_bytes=256_000_000)
        for i in (1, 2, 3)
    }
    settings = ControllerSettings(
        topology=TOPOLOGY,
        origin_url=_url(origin_server),
        data_dir=tmp_path / "controller",
        nodes=tuple(f"{k}={_url(v)}" for k, v in edges.items()),
        token=OPERATOR_TOKEN,
    )
    controller = await aiohttp_server(create_controller_app(settings))
    base = _url(controller)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/placement/recompute", json={"solver": "trimcaching-gen"}) as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with s.post(
            f"{base}/v1/placement/recompute", json={"solver": "trimcaching-gen"}, headers=headers
        ) as resp:
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
        sys.executable,
        "-m",
        "cachenet",
        "placement",
        "show",
        "--controller",
        base,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    shown = json.loads(out)
    assert shown["runs"][0]["run_id"] == run["run_id"] and shown["runs"][0]["solver"] == "trimcaching-gen"


async def test_runs_are_stored_in_the_catalogue_and_listed_after_a_controller_restart(
    origin_server: TestServer,
    origin_settings: OriginSettings,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    target = HttpTarget(_url(origin_server), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    await target.close()
    edges = {
        f"edge-{i}": await edge_factory(origin=origin_server, node_id=f"edge-{i}", capacity_bytes=256_000_000)
        for i in (1, 2, 3)
    }
    settings = ControllerSettings(
        topology=TOPOLOGY,
        origin_url=_url(origin_server),
        data_dir=tmp_path / "controller",
        nodes=tuple(f"{k}={_url(v)}" for k, v in edges.items()),
        token=OPERATOR_TOKEN,
    )
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    first = await aiohttp_server(create_controller_app(settings))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{_url(first)}/v1/placement/recompute", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            run = await resp.json()
        assert run["run_id"] == 1 and run["stored"] is True

        stored = origin_server.app[catalogue_key].placement_runs()
        assert len(stored) == 1
        assert stored[0].solver == "trimcaching-ls" and stored[0].hit_ratio == run["hit_ratio"]
        diff = stored[0].summary["nodes"]["edge-1"]
        assert {"blocks_to_fetch", "blocks_to_release", "bytes_to_fetch"} <= set(diff)
        assert "to_fetch" not in diff
        assert stored[0].summary["bytes_moved"] == run["bytes_moved"] > 0
        assert stored[0].summary["inputs"]["models"] == 1
        async with s.get(f"{_url(origin_server)}/v1/placement-runs", params={"limit": "5"}) as resp:
            listed = (await resp.json())["runs"]
        assert [r["id"] for r in listed] == [stored[0].id] and listed[0]["summary"]["run_id"] == 1
        async with s.post(f"{_url(origin_server)}/v1/placement-runs", json=run) as resp:
            assert resp.status == 401
        async with s.post(
            f"{_url(origin_server)}/v1/placement-runs", json={"solver": "x", "hit_ratio": 2}, headers=headers
        ) as resp:
            assert resp.status == 422
        async with s.get(f"{_url(origin_server)}/v1/placement-runs", params={"limit": "0"}) as resp:
            assert resp.status == 422
        await first.close()

        second = await aiohttp_server(create_controller_app(settings))
        async with s.get(f"{_url(second)}/v1/runs") as resp:
            doc = await resp.json()
        assert doc["source"] == "origin"
        listed_again = [(r["run_id"], r["hit_ratio"], r["stored"]) for r in doc["runs"]]
        assert listed_again == [(1, run["hit_ratio"], True)]
        async with s.post(f"{_url(second)}/v1/placement/recompute", headers=headers) as resp:
            assert (await resp.json())["run_id"] == 2  # numbering goes on from the catalogue
        assert len(origin_server.app[catalogue_key].placement_runs()) == 2
        assert not (settings.data_dir / "runs.json").exists()

        # Origin down: the controller lists what it has in memory, and spools a run it cannot store.
        await origin_server.close()
        async with s.get(f"{_url(second)}/v1/runs") as resp:
            doc = await resp.json()
        assert doc["source"] == "memory" and [r["run_id"] for r in doc["runs"]] == [2]
        async with s.post(f"{_url(second)}/v1/placement/recompute", headers=headers) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "UpstreamUnavailable"
        controller = second.app[controller_key]
        orphan = RunSummary(
            run_id=3,
            solver="independent",
            created_at=2e9,
            hit_ratio=0.5,
            runtime_s=0.1,
            inputs={"models": 1},
            nodes={"edge-1": {"bytes_to_fetch": 7, "pushed": False}},
        )
        assert await controller.save_run(orphan) is False
        assert (settings.data_dir / UNSAVED_RUNS_FILE).exists()
        await second.close()

        # The origin comes back (same catalogue, new port); a new controller lists the spooled run and
        # stores it before its own next run.
        origin = await aiohttp_server(create_origin_app(origin_settings))
        third = await aiohttp_server(
            create_controller_app(
                ControllerSettings(
                    topology=TOPOLOGY,
                    origin_url=_url(origin),
                    data_dir=settings.data_dir,
                    nodes=settings.nodes,
                    token=OPERATOR_TOKEN,
                )
            )
        )
        async with s.get(f"{_url(third)}/v1/runs") as resp:
            doc = await resp.json()
        assert [(r["run_id"], r["stored"]) for r in doc["runs"]] == [(3, False), (2, True), (1, True)]
        async with s.post(f"{_url(third)}/v1/placement/recompute", headers=headers) as resp:
            assert (await resp.json())["run_id"] == 4
        rows = origin.app[catalogue_key].placement_runs()
        assert [r.summary["run_id"] for r in rows] == [4, 3, 2, 1]
        assert not (settings.data_dir / UNSAVED_RUNS_FILE).exists()
