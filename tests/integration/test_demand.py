"""Demand from every device path: a `cachenet pull` through an edge counts for its model and cell (issue #22)."""

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from placement.controller import Controller
from placement.topology import load_topology
from tests.clients.support import publish, url_of
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

TOPOLOGY = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"
LORA = "org/lora-demand"


async def _demand(edge: TestServer) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url_of(edge)}/v1/node/demand") as resp:
        rows: list[dict[str, Any]] = (await resp.json())["demand"]
    return rows


async def test_a_cachenet_pull_through_an_edge_counts_as_demand_for_its_model_and_cell(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    await publish(origin_server, make_lora_adapter(tmp_path / "lora", seed=3), LORA, base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, node_id="edge-2", capacity_bytes=1 << 30)
    assert await _demand(edge) == []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cachenet",
        "pull",
        LORA,
        "--source",
        url_of(edge),
        "--cell",
        "cell-2",
        "--store",
        str(tmp_path / "device"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    rows = await _demand(edge)
    # One pull is one request for the model asked for, in the device's cell; its base is not a second request.
    assert [(r["model"], r["cell"], round(r["count"], 2)) for r in rows] == [(LORA, "cell-2", 1.0)]

    # The same as an HF-style download of every file of the model (files add up to one request).
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url_of(edge)}/api/models/{LORA}") as resp:
            files = [f["rfilename"] for f in (await resp.json())["siblings"]]
        for name in files:
            async with s.get(f"{url_of(edge)}/{LORA}/resolve/main/{name}", headers={"X-Cachenet-Cell": "cell-2"}) as r:
                assert r.status == 200
                await r.read()
    rows = await _demand(edge)
    assert [(r["model"], r["cell"], round(r["count"], 2)) for r in rows] == [(LORA, "cell-2", 2.0)]

    # The controller solves over that demand: all of it in cell-2, for the LoRA model.
    controller = Controller(
        load_topology(TOPOLOGY), origin_url=url_of(origin_server), node_urls={"edge-2": url_of(edge)}, token=None
    )
    try:
        inputs = await controller.gather_inputs()
    finally:
        await controller.close()
    assert inputs.demand_source == "nodes"
    assert {k: round(v, 3) for k, v in inputs.demand.items()} == {("cell-2", LORA): 1.0}
