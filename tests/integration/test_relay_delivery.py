"""Plans executed along the relay tree, and a lookup table that tells the truth (issue #22).

A real origin, four edge nodes and the controller on a topology where the origin reaches the
nodes only through edge-1 (edge-4 through edge-2): a backbone placed on every node leaves the
origin once and crosses each tree link once; killing the relaying node mid-delivery still
completes the plan; the lookup table names a node for a block only once the node holds it.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer
from safetensors.numpy import save_file

from cachenet.edge.keys import cache_key
from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings
from registry.keys import catalogue_key
from tests.clients.support import free_port, publish, remote_metric, server_process, url_of
from tests.conftest import OPERATOR_TOKEN

BACKBONE = "org/backbone"
TENSOR_BYTES = 6 * 1024 * 1024
LINK_BPS = 160e6  # 20 MB/s per link: a 24 MiB backbone takes ~1.3 s per link
EDGES = ("edge-1", "edge-2", "edge-3", "edge-4")
TREE = (("origin", "edge-1"), ("edge-1", "edge-2"), ("edge-1", "edge-3"), ("edge-2", "edge-4"))
HEADERS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def _topology(path: Path) -> Path:
    servers = "\n".join(f"  - {{id: {s}, position: [{1000.0 * i}, 0.0], capacity: 200MB}}" for i, s in enumerate(EDGES))
    users = "\n".join(
        f"  - {{id: cell-{i + 1}, position: [{1000.0 * i + 10}, 0.0], server: {s}}}" for i, s in enumerate(EDGES)
    )
    links = "\n".join(f"  - {{a: {a}, b: {b}, rate_bps: {LINK_BPS}}}" for a, b in TREE)
    path.write_text(
        "name: relay-test\noverhead_s: 0.0\nlatency_requirement_s: 1.0\n"
        "radio: {bandwidth_hz: 1.0e+8, tx_power_dbm: 43.0, noise_dbm_per_hz: -174.0, rayleigh: false}\n"
        f"servers:\n{servers}\nnodes: [origin]\norigin: origin\nbackhaul:\n{links}\nusers:\n{users}\n"
    )
    return path


def _backbone(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(22)
    n = TENSOR_BYTES // 4
    save_file(
        {f"layer.{i}.weight": rng.standard_normal(n, dtype=np.float32) for i in range(4)}, folder / "model.safetensors"
    )
    (folder / "config.json").write_text('{"model_type": "backbone"}')
    return folder


@dataclass
class Cluster:
    origin: TestServer
    edges: dict[str, TestServer]
    urls: dict[str, str]
    controller: TestServer
    backbone: dict[str, int]  # block id -> size


@asynccontextmanager
async def _cluster(
    origin: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    *,
    external: dict[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    await publish(origin, _backbone(tmp_path / "backbone"), BACKBONE)
    manifest = origin.app[catalogue_key].manifest(BACKBONE)
    blocks = {b: r.size for b, r in manifest.unique_blocks().items()}
    edges = {
        s: await edge_factory(origin=origin, node_id=s, capacity_bytes=200_000_000, upstream_timeout_s=30.0)
        for s in EDGES
        if s not in (external or {})
    }
    urls = {**{s: url_of(e) for s, e in edges.items()}, **(external or {})}
    settings = ControllerSettings(
        topology=_topology(tmp_path / "topology.yaml"),
        origin_url=url_of(origin),
        data_dir=tmp_path / "controller",
        nodes=tuple(f"{s}={u}" for s, u in urls.items()),
        token=OPERATOR_TOKEN,
        holdings_refresh_s=0.05,
    )
    controller = await aiohttp_server(create_controller_app(settings))
    yield Cluster(origin, edges, urls, controller, blocks)


async def _recompute(s: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    async with s.post(f"{url_of(cluster.controller)}/v1/placement/recompute", headers=HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        run: dict[str, Any] = await resp.json()
    return run


async def _wait_delivered(s: aiohttp.ClientSession, cluster: Cluster, *, timeout_s: float = 60) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.1)):
        async with s.get(f"{url_of(cluster.controller)}/v1/deliveries") as resp:
            latest: dict[str, Any] = (await resp.json())["deliveries"][0]
        if latest["state"] != "delivering":
            return latest
        await asyncio.sleep(0.1)
    raise AssertionError(f"delivery not finished: {latest}")


async def _held(s: aiohttp.ClientSession, url: str) -> set[str]:
    async with s.get(f"{url}/v1/node/state", params={"blocks": "1"}) as resp:
        return set((await resp.json())["block_ids"])


async def test_a_backbone_placed_on_every_node_leaves_the_origin_once_along_the_relay_tree(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    async with _cluster(origin_server, edge_factory, aiohttp_server, tmp_path) as cluster, aiohttp.ClientSession() as s:
        backbone_bytes = sum(cluster.backbone.values())
        served_before = await remote_metric(url_of(origin_server), "cachenet_origin_bytes_served_total")
        run = await _recompute(s, cluster)
        assert {n: v["blocks_to_fetch"] for n, v in run["nodes"].items()} == {e: len(cluster.backbone) for e in EDGES}
        delivery = await _wait_delivered(s, cluster)
        assert delivery["state"] == "complete", delivery
        served = await remote_metric(url_of(origin_server), "cachenet_origin_bytes_served_total") - served_before
        assert served <= 1.1 * backbone_bytes, (served, backbone_bytes)
        for name, edge in cluster.edges.items():
            store = edge.app[cache_key].store
            assert set(cluster.backbone) <= set(store.ids()), name
            assert all(store.verify(b) for b in cluster.backbone), name
        # Each tree link carried the backbone once, as planned; nodes got it from their parents.
        links = {(x["a"], x["b"]): x for x in delivery["links"]}
        for a, b in TREE:
            link = links[(min(a, b), max(a, b))]
            assert link["planned"] == backbone_bytes
            assert backbone_bytes <= link["measured"] <= 1.1 * backbone_bytes, link
        assert delivery["nodes"]["edge-4"]["received"] == {"edge-2": backbone_bytes}
        assert delivery["nodes"]["edge-1"]["received"] == {"origin": backbone_bytes}


async def test_lookup_table_never_lists_a_node_for_a_block_it_does_not_hold(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    async with _cluster(origin_server, edge_factory, aiohttp_server, tmp_path) as cluster, aiohttp.ClientSession() as s:
        by_url = {u: n for n, u in cluster.urls.items()}
        await _recompute(s, cluster)
        checks = listed = 0
        while True:
            async with s.get(f"{url_of(cluster.controller)}/v1/deliveries") as resp:
                state = (await resp.json())["deliveries"][0]["state"]
            async with s.get(f"{url_of(cluster.controller)}/v1/lookup") as resp:
                table = (await resp.json())["blocks"]
            # Read after the table: nothing is evicted here, so a node listed must hold the block now.
            held = {n: await _held(s, u) for n, u in cluster.urls.items()}
            for block_id, urls in table.items():
                for url in urls:
                    assert block_id in held[by_url[url]], (block_id, by_url[url])
                    listed += 1
            checks += 1
            if state != "delivering":
                break
            await asyncio.sleep(0.02)
        assert checks >= 5  # checked while the plan was being delivered, not only after
        await asyncio.sleep(0.2)
        async with s.get(f"{url_of(cluster.controller)}/v1/lookup") as resp:
            table = (await resp.json())["blocks"]
        assert {b: sorted(by_url[u] for u in urls) for b, urls in table.items()} == {
            b: list(EDGES) for b in cluster.backbone
        }
        assert listed > 0


async def test_killing_the_relaying_node_mid_delivery_still_completes_through_the_origin(
    origin_server: TestServer, edge_factory: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    port = free_port()
    args = [
        "edge", "serve", "--node-id", "edge-1", "--data", str(tmp_path / "edge-1"), "--capacity", "200MB",
        "--origin", url_of(origin_server), "--token", OPERATOR_TOKEN, "--no-multicast",
    ]  # fmt: skip
    async with server_process(args, tmp_path / "edge-1.log", port=port) as relay:
        async with (
            _cluster(origin_server, edge_factory, aiohttp_server, tmp_path, external={"edge-1": relay.url}) as cluster,
            aiohttp.ClientSession() as s,
        ):
            await _recompute(s, cluster)
            # Kill edge-1 once its children are receiving the backbone from it.
            for _ in range(400):
                got = sum(e.app[cache_key].upstream.received.get(relay.url, 0) for e in cluster.edges.values())
                if got > 0:
                    break
                await asyncio.sleep(0.01)
            assert got > 0, "no node received from edge-1"
            relay.kill()
            delivery = await _wait_delivered(s, cluster)
            assert {n: delivery["nodes"][n]["state"] for n in ("edge-2", "edge-3", "edge-4")} == dict.fromkeys(
                ("edge-2", "edge-3", "edge-4"), "applied"
            )
            for name, edge in cluster.edges.items():
                store = edge.app[cache_key].store
                assert set(cluster.backbone) <= set(store.ids()), name
                assert all(store.verify(b) for b in cluster.backbone), name
            # edge-2 and edge-3 went around their dead parent, to the origin.
            for name in ("edge-2", "edge-3"):
                assert delivery["nodes"][name]["received"].get("origin", 0) > 0, delivery["nodes"][name]
