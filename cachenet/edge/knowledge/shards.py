"""Knowledge queries at an edge node: answer from held shards, fetch the missing ones, or forward.

A query is routed exactly as the origin routes it (`route_query` over the collection's
index). When the node holds every routed shard it answers locally; the answer is the
origin's, because both run `search_shards` over the same shard bytes. When some are
missing, they are fetched through `EdgeCache.open_block` (verified against the manifest's
BLAKE3, admitted under the node's one capacity and replacement policy, single flight with
model downloads), unless the query's `deadline_ms` would be missed: the fetch time is
estimated from the missing bytes and the upstream rate (a configured prior, then an
exponential average of observed shard fetches) and, when too slow, the query is forwarded
to the origin while the shards are fetched in the background for the next queries.
Each query counts as demand for the collection (`knowledge/<name>`) weighted by the
fraction of its bytes the query needs, as a file download counts for a model.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import msgspec
from prometheus_client import Counter

from cachenet.edge.cache import EdgeCache
from cachenet.edge.demand import DemandStats
from cachenet.edge.manifests import ManifestCache
from cachenet.errors import (
    BadInput,
    BlockNotFound,
    CachenetError,
    ManifestInvalid,
    NotFound,
    UpstreamUnavailable,
)
from cachenet.httpclient import raise_for_status
from cachenet.knowledge.embedder import embed_query
from cachenet.knowledge.formats import (
    IndexInfo,
    Shard,
    ShardInfo,
    Vectors,
    collection_model_name,
    decode_index,
    decode_shard,
    index_ref,
)
from cachenet.knowledge.search import QueryInfo, decode_query_body, make_answer, route_query, search_shards
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.protocol.codec import decode_json
from cachenet.protocol.knowledge import AnswerInfo
from cachenet.server.deviceapi import LocalBlock
from cachenet.server.flight import Flight
from cachenet.server.gate import WorkGate

__all__ = ("EdgeKnowledge", "FetchEstimator")
log = logging.getLogger(__name__)

DEFAULT_UPSTREAM_RATE_BYTES_PER_S: Final = 100e6 / 8
DEFAULT_UPSTREAM_RTT_S: Final = 0.02
DECODED_SHARDS_KEPT: Final = 256
_RATE_WEIGHT: Final = 0.3
_MIN_OBSERVED_BYTES: Final = 64 * 1024


@dataclass
class FetchEstimator:
    """Estimates how long fetching bytes from upstream takes: RTT + bytes / rate.

    `rate_bytes_per_s` starts at the configured prior; with `learn`, each observed shard
    fetch of at least 64 KiB moves it by an exponential average (weight 0.3).
    """

    rate_bytes_per_s: float = DEFAULT_UPSTREAM_RATE_BYTES_PER_S
    rtt_s: float = DEFAULT_UPSTREAM_RTT_S
    learn: bool = True
    observed: int = field(default=0, init=False)

    def estimate_s(self, nbytes: int) -> float:
        """Seconds to fetch `nbytes` (in parallel blocks) from upstream."""
        return self.rtt_s + nbytes / self.rate_bytes_per_s

    def observe(self, nbytes: int, elapsed_s: float) -> None:
        """Learn from a fetch of `nbytes` that took `elapsed_s`."""
        if not self.learn or nbytes < _MIN_OBSERVED_BYTES or elapsed_s <= 0:
            return
        rate = nbytes / max(elapsed_s - self.rtt_s, elapsed_s / 2)
        self.rate_bytes_per_s = (1 - _RATE_WEIGHT) * self.rate_bytes_per_s + _RATE_WEIGHT * rate
        self.observed += 1


class EdgeKnowledge:
    """The node's knowledge query engine over its block cache."""

    def __init__(
        self,
        cache: EdgeCache,
        manifests: ManifestCache,
        demand: DemandStats,
        *,
        estimator: FetchEstimator | None = None,
        fetch_behind_forward: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.manifests = manifests
        self.demand = demand
        self.estimator = estimator or FetchEstimator()
        self.fetch_behind_forward = fetch_behind_forward
        # Queries are admitted by this gate (routes) and embed and search in its threads.
        settings = cache.settings
        self.gate = WorkGate(
            "knowledge query", concurrency=settings.knowledge_concurrency, queue=settings.knowledge_queue
        )
        self._clock = clock
        self._indexes: dict[str, IndexInfo] = {}
        self._decoded: OrderedDict[str, Shard] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        r = cache.metrics.registry
        self.shard_hits = Counter(
            "cachenet_edge_knowledge_shard_hits",
            "Routed shards the node held",
            ["collection"],
            registry=r,
        )
        self.shard_fetches = Counter(
            "cachenet_edge_knowledge_shard_fetches",
            "Routed shards fetched upstream",
            ["collection"],
            registry=r,
        )
        self.forwards = Counter(
            "cachenet_edge_knowledge_forwards",
            "Queries forwarded to the origin, by reason",
            ["collection", "reason"],
            registry=r,
        )
        self.queries = Counter(
            "cachenet_edge_knowledge_queries",
            "Queries by how they were answered",
            ["collection", "served"],
            registry=r,
        )

    async def close(self) -> None:
        """Stop background shard fetches."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.gate.close()

    async def collection(self, collection: str, revision: str = "main") -> tuple[ModelManifest, IndexInfo]:
        """A collection's manifest (cached, tags revalidated) and index (a cached block)."""
        name = collection_model_name(collection)
        try:
            manifest = await self.manifests.get(name, revision)
        except CachenetError as e:
            raise _relayed(e) from None
        ref = index_ref(manifest)
        index = self._indexes.get(ref.block_id)
        if index is None:
            index = decode_index(await self._read(ref, manifest.name))
            known = manifest.unique_blocks()
            if any(known.get(s.block_id) != s.ref for s in index.shards):
                raise ManifestInvalid(
                    f"{manifest.name}: the index names shards its manifest lacks",
                    model=manifest.name,
                )
            self._indexes[ref.block_id] = index
        return manifest, index

    async def answer(self, collection: str, body: bytes, *, cell: str | None = None) -> AnswerInfo:
        """Answer a query body locally, after fetching shards, or by forwarding it to the origin."""
        query = decode_query_body(body)
        manifest, index = await self.collection(collection, query.revision)
        vector = await self._vector(query, index)
        if vector is None:
            return await self._forward(collection, body, "no_embedder")
        probe = route_query(index, vector, query.nprobe)
        infos = {n: index.shards[n] for n in probe}
        self._record_demand(manifest, index, infos, cell)
        # Read held shards first: a fetch below may evict them to make room.
        shards: dict[int, Shard] = {}
        for n, info in infos.items():
            held = await self._held(info)
            if held is not None:
                shards[n] = held
        missing = {n: info for n, info in infos.items() if n not in shards}
        for n, info in infos.items():
            if n in shards:
                await self._touch(info, manifest.name)
        self.shard_hits.labels(collection).inc(len(shards))
        if missing:
            need = sum(i.size for i in missing.values())
            if query.deadline_ms is not None and self.estimator.estimate_s(need) * 1000 > query.deadline_ms:
                if self.fetch_behind_forward:
                    self._fetch_behind(collection, manifest.name, list(missing.values()))
                return await self._forward(collection, body, "deadline")
            shards.update(await self._fetch(collection, manifest.name, missing))
        hits = await self.gate.run(search_shards, shards, vector, query.k)
        served = "fetched" if missing else "local"
        self.queries.labels(collection, served).inc()
        return make_answer(index, manifest.revision, probe, hits, served=served, node=self.cache.settings.node_id)

    def held_shards(self, index: IndexInfo) -> list[int]:
        """Numbers of the collection's shards the store holds."""
        return [n for n, s in enumerate(index.shards) if self.cache.store.has(s.block_id)]

    # -- internals -----------------------------------------------------------------------

    async def _vector(self, query: QueryInfo, index: IndexInfo) -> Vectors | None:
        if query.embedding is not None:
            if query.embedding.shape != (index.dims,):
                raise BadInput(f"'embedding' has {query.embedding.shape[0]} dims; the collection has {index.dims}")
            return query.embedding
        assert query.text is not None
        try:
            return await self.gate.run(embed_query, query.text, model=index.model)
        except NotFound as e:  # no embedding model on this node: the origin embeds
            log.warning("cannot embed queries here (%s); forwarding text queries", e)
            return None

    async def _held(self, info: ShardInfo) -> Shard | None:
        if not self.cache.store.has(info.block_id):
            self._decoded.pop(info.block_id, None)
            return None
        shard = self._decoded.get(info.block_id)
        if shard is not None:
            self._decoded.move_to_end(info.block_id)
            return shard
        try:
            data = await asyncio.to_thread(self.cache.store.read, info.block_id)
        except (NotFound, OSError):
            return None  # evicted in between: fetch it
        return self._remember(info, await asyncio.to_thread(decode_shard, data))

    def _remember(self, info: ShardInfo, shard: Shard) -> Shard:
        # Decoded copies only of stored shards (checked on use), so the node's one capacity
        # still decides what knowledge it holds.
        if self.cache.store.has(info.block_id):
            self._decoded[info.block_id] = shard
            while len(self._decoded) > DECODED_SHARDS_KEPT:
                self._decoded.popitem(last=False)
        return shard

    async def _fetch(self, collection: str, model: str, missing: dict[int, ShardInfo]) -> dict[int, Shard]:
        started = self._clock()
        datas = await asyncio.gather(*(self._read(i.ref, model) for i in missing.values()))
        self.estimator.observe(sum(len(d) for d in datas), self._clock() - started)
        self.shard_fetches.labels(collection).inc(len(missing))
        out = {}
        for (n, info), data in zip(missing.items(), datas, strict=True):
            out[n] = self._remember(info, await asyncio.to_thread(decode_shard, data))
        return out

    def _fetch_behind(self, collection: str, model: str, infos: list[ShardInfo]) -> None:
        async def run() -> None:
            try:
                await self._fetch(collection, model, {i: info for i, info in enumerate(infos)})
            except CachenetError as e:
                log.warning("background fetch of %s shards failed: %s", collection, e)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _touch(self, info: ShardInfo, model: str) -> None:
        """Count a hit and refresh the shard in the replacement policy."""
        if self.cache.store.has(info.block_id):
            try:
                await self.cache.open_block(info.block_id, blake3=info.blake3, model=model)
            except BlockNotFound:
                pass  # evicted meanwhile; this query already holds its decoded copy

    async def _read(self, ref: BlockRef, model: str) -> bytes:
        """A block's bytes through the cache (verified, admitted under the node's policy)."""
        for attempt in range(2):
            try:
                handle = await self.cache.open_block(ref.block_id, blake3=ref.blake3, model=model)
            except BlockNotFound:
                # Evicted (in a worker thread) between the cache's has() and path(): once more.
                if attempt == 1:
                    raise
                continue
            if isinstance(handle, Flight):
                path = await handle.wait()
            else:
                assert isinstance(handle, LocalBlock)
                path = handle.path
            try:
                return await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                if attempt == 1:  # evicted twice between fetch and read: give up
                    raise UpstreamUnavailable(
                        f"block {ref.block_id} vanished while being read", block_id=ref.block_id
                    ) from None
        raise AssertionError("unreachable")

    async def _forward(self, collection: str, body: bytes, reason: str) -> AnswerInfo:
        url = f"{self.cache.settings.origin_url.rstrip('/')}/v1/knowledge/{collection}/query"
        self.forwards.labels(collection, reason).inc()
        try:
            async with self.cache.session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                try:
                    await raise_for_status(resp)
                except CachenetError as e:
                    raise _relayed(e) from None
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise UpstreamUnavailable(f"origin unreachable for a forwarded query: {e!r}") from e
        answer = decode_json(raw, AnswerInfo, what="the origin's answer")
        self.queries.labels(collection, "forwarded").inc()
        return msgspec.structs.replace(answer, served="forwarded", node=self.cache.settings.node_id)

    def _record_demand(
        self,
        manifest: ModelManifest,
        index: IndexInfo,
        infos: dict[int, ShardInfo],
        cell: str | None,
    ) -> None:
        total = index.total_bytes
        weight = sum(i.size for i in infos.values()) / total if total else 1.0
        self.demand.record(manifest.name, manifest.revision, cell=cell, weight=weight)
        self.cache.policy.record_request(manifest.name, weight=weight)


def _relayed(error: CachenetError) -> CachenetError:
    """The origin's error as this node's own (without the upstream's HTTP status attribute)."""
    attrs = {k: v for k, v in error.attrs.items() if k != "status_code"}
    return type(error)(error.message, **attrs)
