"""The demo: publish the real model and LoRA variants, pull them back as devices would, summarise.

The placement spreads the models over the nodes (the demo topology's backhaul is slow), and the
plan is delivered along the relay tree: the demo shows the origin's egress and the bytes per
link, planned vs measured. One device downloads the model through the Hugging Face API of an edge node; then one
device per LoRA variant pulls its variant at the same time through the same node, which
sends the shared backbone once by multicast and each adapter by unicast.
"""

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
from huggingface_hub import snapshot_download
from prometheus_client.parser import text_string_to_metric_families

from cachenet.httpclient import auth_headers, raise_for_status
from cachenet.units import format_bytes
from clients.puller import PullReport, pull
from cluster.demomodels import REAL_MODEL_NAME, make_lora_adapter, real_model_dir
from registry.publish import HttpTarget, publish_path

__all__ = ("DEMO_LORA_VARIANTS", "run_demo")

DEMO_LORA_VARIANTS = 4


async def run_demo(
    *, origin_url: str, controller_url: str, edge_url: str, token: str, work_dir: Path
) -> dict[str, Any]:
    """Run the demo against a running cluster; returns the summary (with printable lines)."""
    target = HttpTarget(origin_url, token)
    reports = []
    try:
        reports.append(await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False))
        for i in range(DEMO_LORA_VARIANTS):
            folder = make_lora_adapter(work_dir / f"lora-{i}", seed=i, r=8 + 8 * (i % 2))
            reports.append(
                await publish_path(
                    folder, name=f"demo/minilm-lora-{i}", target=target, base=REAL_MODEL_NAME, progress=False
                )
            )
    finally:
        await target.close()
    base_bytes = reports[0].total_bytes
    # Without block sharing every LoRA variant would be shipped as base + adapter.
    total = sum(r.total_bytes for r in reports) + base_bytes * DEMO_LORA_VARIANTS
    stored = sum(r.stored_bytes for r in reports)
    origin_before = await _metric(origin_url, "cachenet_origin_bytes_served_total")
    async with aiohttp.ClientSession(headers=auth_headers(token)) as session:
        async with session.post(f"{controller_url}/v1/placement/recompute", json={"solver": "trimcaching-gen"}) as resp:
            await raise_for_status(resp)
            run = await resp.json()
        delivery: dict[str, Any] = {}
        for _ in range(1200):  # wait for the nodes to fetch their planned blocks
            async with session.get(f"{controller_url}/v1/deliveries") as resp:
                listed = (await resp.json())["deliveries"]
            delivery = listed[0] if listed else {}
            if delivery.get("state", "delivering") != "delivering":
                break
            await asyncio.sleep(0.1)
    origin_sent = await _metric(origin_url, "cachenet_origin_bytes_served_total") - origin_before
    spread = {n: v.get("blocks", 0) for n, v in run["nodes"].items()}
    device_dir = work_dir / "device"
    snapshot: str = await asyncio.to_thread(
        lambda: snapshot_download(REAL_MODEL_NAME, endpoint=edge_url, cache_dir=device_dir / "hf-cache")
    )
    identical = all(
        hashlib.sha256((Path(snapshot) / rel).read_bytes()).hexdigest()
        == hashlib.sha256((real_model_dir() / rel).read_bytes()).hexdigest()
        for rel in ("model.safetensors", "config.json", "tokenizer.json")
    )
    multicast = await _concurrent_variant_pulls(edge_url, work_dir / "devices")
    lines = [
        f"published {len(reports)} models ({REAL_MODEL_NAME} + {DEMO_LORA_VARIANTS} LoRA variants): "
        f"{format_bytes(total)} as whole models, {format_bytes(stored)} stored, "
        f"{format_bytes(total - stored)} deduplicated",
        f"placement (TrimCaching, {run['solver']}): expected hit ratio {run['hit_ratio']:.3f}, "
        f"bytes moved to the edge nodes {format_bytes(run['bytes_moved'])}",
        f"placement spreads the models: blocks per node {spread}",
        _delivery_line(delivery, origin_sent),
        f"device pull of {REAL_MODEL_NAME} from edge node {edge_url} (Hugging Face API): "
        f"{'byte-identical' if identical else 'MISMATCH'} ({snapshot})",
        multicast["line"],
        f"dashboard: {controller_url}/ (data: {controller_url}/v1/cluster, {controller_url}/v1/runs)",
    ]
    return {
        "models": [r.to_json() for r in reports],
        "bytes_as_files": total,
        "bytes_stored": stored,
        "bytes_deduplicated": total - stored,
        "device_pull_identical": identical,
        "hit_ratio": run["hit_ratio"],
        "bytes_moved": run["bytes_moved"],
        "blocks_per_node": spread,
        "delivery": delivery,
        "origin_bytes_served": origin_sent,
        "multicast": {k: v for k, v in multicast.items() if k != "line"},
        "lines": lines,
    }


async def _concurrent_variant_pulls(edge_url: str, devices: Path) -> dict[str, Any]:
    """Every LoRA variant pulled at once by its own device through one edge node (multicast where it can)."""
    before = await _egress(edge_url)
    reports: list[PullReport] = await asyncio.gather(
        *(
            pull(f"demo/minilm-lora-{i}", sources=[edge_url], store=devices / f"device-{i}", progress=False)
            for i in range(DEMO_LORA_VARIANTS)
        )
    )
    after = await _egress(edge_url)
    egress = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("multicast", "unicast", "repair")}
    sent = sum(egress.values())
    unicast_only = sum(r.needed_bytes for r in reports)
    sessions = {r.multicast.session for r in reports if r.multicast is not None} - {None}
    line = (
        f"{DEMO_LORA_VARIANTS} devices pulled the {DEMO_LORA_VARIANTS} LoRA variants at once from {edge_url}: "
        f"{len(sessions)} multicast session(s); the node sent {format_bytes(egress['multicast'])} by multicast, "
        f"{format_bytes(egress['unicast'])} by unicast, {format_bytes(egress['repair'])} of repair = "
        f"{format_bytes(sent)}, versus {format_bytes(unicast_only)} by unicast alone"
    )
    return {
        "sessions": len(sessions),
        "egress_bytes": int(sent),
        "egress_by_kind": egress,
        "unicast_only_bytes": unicast_only,
        "line": line,
    }


def _delivery_line(delivery: dict[str, Any], origin_sent: float) -> str:
    """The relay delivery of the run: origin egress, bytes per link planned vs measured, time."""
    if not delivery:
        return "relay delivery: not followed (no schedule)"
    links = ", ".join(
        f"{x['a']}-{x['b']} {format_bytes(x['planned'])}/{format_bytes(x['measured'])}" for x in delivery["links"]
    )
    time_s = delivery.get("time_s")
    return (
        f"relay delivery of run {delivery['run_id']} ({delivery['state']}"
        f"{f', {time_s:.1f} s' if time_s is not None else ''}): the origin sent {format_bytes(origin_sent)}; "
        f"per link planned/measured: {links}"
    )


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def _egress(edge_url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{edge_url}/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cachenet_edge_egress_bytes_total"
    }
