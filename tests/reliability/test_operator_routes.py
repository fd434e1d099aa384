"""Every operator route of every server refuses a missing or wrong token (enumerated from OpenAPI)."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings

TOPOLOGY = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"
SAMPLE = {"block_id": "0" * 32, "name": "org/model", "revision": "main", "path": "x.bin"}


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def _operator_routes(server: TestServer) -> list[tuple[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(f"{_url(server)}/openapi.json") as resp:
        doc = await resp.json()
    routes = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op.get("security"):
                concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m.group(1), "x"), path)
                routes.append((method.upper(), concrete))
    return routes


async def test_operator_routes_refuse_missing_and_wrong_tokens(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 20)
    controller = await aiohttp_server(
        create_controller_app(
            ControllerSettings(
                topology=TOPOLOGY,
                origin_url=_url(origin_server),
                data_dir=tmp_path / "c",
                token="right-token",
                nodes=(f"edge-1={_url(edge)}",),
            )
        )
    )
    checked = 0
    async with aiohttp.ClientSession() as s:
        for server in (origin_server, edge, controller):
            routes = await _operator_routes(server)
            assert routes, f"{_url(server)} documents no operator route"
            for method, path in routes:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
                    async with s.request(method, _url(server) + path, headers=headers, data=b"{}") as resp:
                        assert resp.status == 401, (method, path, headers, resp.status)
                        assert (await resp.json())["error"] == "Unauthorized"
                        checked += 1
    assert checked >= 3 * 5
