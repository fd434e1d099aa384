"""Knowledge queries on a real origin and edge nodes: rank 1, edge == origin, shared capacity."""

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp.test_utils import TestServer
from safetensors.numpy import save_file

from cachenet.edge.keys import cache_key, edge_knowledge_key
from cachenet.edge.knowledge.shards import FetchEstimator
from cachenet.protocol.knowledge import AnswerInfo, HitInfo
from clients.knowledge.client import KnowledgeClient
from registry.knowledge.ingest import IngestReport
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN, metric
from tests.knowledge.conftest import COLLECTION, SHARDS, EdgeFactory, passage, url_of

KNOWN: tuple[str, ...] = tuple(
    f"{t}/{t_i:02d}-{i:02d}.md"
    for t_i, t in enumerate(("astronomy", "baking", "sailing", "beekeeping", "volcanology", "chess"))
    for i in (0, 7)
)


async def _ask(server: TestServer, text: str, **kw: Any) -> AnswerInfo:
    async with KnowledgeClient(url_of(server)) as client:
        return await client.query(COLLECTION, text, **kw)


def _same(a: AnswerInfo, b: AnswerInfo) -> bool:
    return a.shards == b.shards and a.results == b.results and a.revision == b.revision


async def test_known_passages_are_rank_one_at_the_origin_and_at_an_edge_node(
    knowledge_origin: TestServer,
    edge_factory: EdgeFactory,
    corpus_docs: dict[str, str],
    ingested: tuple[Path, Path, IngestReport],
) -> None:
    assert ingested[2].documents == len(corpus_docs) and ingested[2].shards == SHARDS
    edge = await edge_factory(origin=knowledge_origin, capacity_bytes=1 << 30)
    for rel in KNOWN:
        text = passage(corpus_docs[rel])
        for server in (knowledge_origin, edge):
            answer = await _ask(server, text, k=5)
            top: HitInfo = answer.results[0]
            assert (top.source, top.position, top.text) == (rel, 0, text), (server, rel)
            assert top.score > 0.99 and len(answer.results) == 5
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url_of(knowledge_origin)}/v1/knowledge") as resp:
            listed = (await resp.json())["collections"]
        assert [c["collection"] for c in listed] == [COLLECTION] and listed[0]["shards"] == SHARDS
        async with s.post(f"{url_of(edge)}/v1/knowledge/nope/query", json={"text": "x"}) as resp:
            assert resp.status == 404
        async with s.post(f"{url_of(edge)}/v1/knowledge/{COLLECTION}/query", json={"text": "x", "k": 0}) as resp:
            assert resp.status == 422


async def test_an_edge_node_answers_like_the_origin_whether_it_holds_fetches_or_forwards(
    knowledge_origin: TestServer,
    edge_factory: EdgeFactory,
    corpus_docs: dict[str, str],
) -> None:
    edge = await edge_factory(origin=knowledge_origin, capacity_bytes=1 << 30)
    texts = [passage(corpus_docs[rel]) for rel in KNOWN]
    cold = await _ask(edge, texts[0], nprobe=2)
    assert cold.served == "fetched" and _same(cold, await _ask(knowledge_origin, texts[0], nprobe=2))
    assert metric(edge, "cachenet_edge_knowledge_shard_fetches_total") == 2

    warm = await _ask(edge, texts[0], nprobe=2)
    assert warm.served == "local" and _same(warm, cold)
    assert metric(edge, "cachenet_edge_knowledge_shard_hits_total") == 2
    assert metric(edge, "cachenet_edge_knowledge_shard_fetches_total") == 2

    # An embedding computed on the device gives the same answer as the text.
    assert _same(await _ask(edge, texts[0], nprobe=2, embed_locally=True), cold)

    # Too slow to fetch within the deadline: forwarded, and the shards arrive behind it.
    knowledge = edge.app[edge_knowledge_key]
    knowledge.estimator = FetchEstimator(rate_bytes_per_s=1000.0, learn=False)
    held = set(cold.shards)
    text = ""
    for candidate in texts:
        if not set((await _ask(knowledge_origin, candidate, nprobe=3)).shards) <= held:
            text = candidate
            break
    forwarded = await _ask(edge, text, nprobe=3, deadline_ms=50)
    assert forwarded.served == "forwarded" and _same(forwarded, await _ask(knowledge_origin, text, nprobe=3))
    assert metric(edge, "cachenet_edge_knowledge_forwards_total", reason="deadline") == 1
    for _ in range(200):
        if set(forwarded.shards) <= set(knowledge.held_shards((await knowledge.collection(COLLECTION))[1])):
            break
        await asyncio.sleep(0.01)
    local = await _ask(edge, text, nprobe=3, deadline_ms=50)
    assert local.served == "local" and _same(local, forwarded)

    # Demand is recorded under the collection's catalogue name, for the controller.
    async with aiohttp.ClientSession() as s, s.get(f"{url_of(edge)}/v1/node/demand") as resp:
        demand = (await resp.json())["demand"]
    assert [row["model"] for row in demand] == [f"knowledge/{COLLECTION}"] and demand[0]["count"] > 0


async def test_knowledge_shards_and_model_blocks_share_one_capacity(
    knowledge_origin: TestServer,
    edge_factory: EdgeFactory,
    corpus_docs: dict[str, str],
    ingested: tuple[Path, Path, IngestReport],
    tmp_path: Path,
) -> None:
    model = tmp_path / "tiny-model"
    model.mkdir()
    rng = np.random.default_rng(0)
    save_file(
        {f"layer.{i}.weight": rng.standard_normal((128, 128)).astype(np.float32) for i in range(4)},
        str(model / "model.safetensors"),
    )
    (model / "config.json").write_text('{"model_type": "tiny"}')
    target = HttpTarget(url_of(knowledge_origin), OPERATOR_TOKEN)
    try:
        published = await publish_path(model, name="org/tiny", target=target, progress=False)
    finally:
        await target.close()
    collection_bytes = ingested[2].total_bytes
    capacity = published.total_bytes + collection_bytes // 3
    edge = await edge_factory(origin=knowledge_origin, capacity_bytes=capacity, policy="lru")
    store = edge.app[cache_key].store
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, store.used_bytes)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession() as s:
        for f in ("model.safetensors", "config.json"):
            async with s.get(f"{url_of(edge)}/org/tiny/resolve/main/{f}") as resp:
                assert resp.status == 200
                await resp.read()
        assert store.used_bytes >= published.total_bytes - 1024
        for rel in list(corpus_docs)[::9]:
            text = passage(corpus_docs[rel])
            answer = await _ask(edge, text, nprobe=2)
            assert answer.results[0].source == rel and _same(answer, await _ask(knowledge_origin, text, nprobe=2))
            assert store.used_bytes <= capacity
        async with s.get(f"{url_of(edge)}/org/tiny/resolve/main/config.json") as resp:
            assert resp.status == 200
    done.set()
    await watcher
    assert peak <= capacity and store.used_bytes <= capacity
    assert metric(edge, "cachenet_edge_evictions_total") > 0
    assert metric(edge, "cachenet_edge_knowledge_shard_fetches_total") > SHARDS / 3
    assert store.check().ok
