"""Origin routes of RAG knowledge collections: list them, describe one, answer top-k queries."""

import asyncio
import threading
from collections import OrderedDict
from typing import Final, TypeVar

from aiohttp import web

from cachenet.blockstore import BlockStore
from cachenet.errors import ModelNotFound
from cachenet.knowledge.embedder import embed_query
from cachenet.knowledge.formats import (
    KNOWLEDGE_KIND,
    KNOWLEDGE_PREFIX,
    IndexInfo,
    Shard,
    ShardInfo,
    collection_model_name,
    decode_index,
    decode_shard,
    describe,
    index_ref,
)
from cachenet.knowledge.search import MAX_QUERY_BODY_BYTES, decode_query_body, make_answer, route_query, search_shards
from cachenet.manifest import ModelManifest
from cachenet.protocol.knowledge import AnswerInfo, CollectionInfo, CollectionList, CollectionSummary, QueryBody
from cachenet.protocol.patterns import ROUTE_COLLECTION
from cachenet.server.gate import WorkGate
from cachenet.server.httpbody import message_response, read_body
from cachenet.server.openapi import ApiDoc
from registry.catalogue import Catalogue
from registry.keys import catalogue_key, store_key

__all__ = ("OriginKnowledge", "add_knowledge_routes", "knowledge_key")

DEFAULT_SHARD_MEMORY_BYTES: Final = 512 * 1024 * 1024


class OriginKnowledge:
    """The origin's collections: indexes and decoded shards kept in memory (LRU by bytes)."""

    def __init__(
        self,
        catalogue: Catalogue,
        store: BlockStore,
        *,
        max_shard_bytes: int = DEFAULT_SHARD_MEMORY_BYTES,
    ) -> None:
        self.catalogue = catalogue
        self.store = store
        self.max_shard_bytes = max_shard_bytes
        self._indexes: dict[str, IndexInfo] = {}
        self._shards: OrderedDict[str, Shard] = OrderedDict()
        self._shard_bytes = 0
        self._lock = threading.Lock()
        # Queries are admitted by this gate and embed and search in its threads (issue 14).
        self.gate = WorkGate("knowledge query")

    def collection(self, collection: str, revision: str = "main") -> tuple[ModelManifest, IndexInfo]:
        """The manifest and index of a collection revision; raises `ModelNotFound` (blocking)."""
        name = collection_model_name(collection)
        try:
            manifest = self.catalogue.manifest(name, revision)
        except ModelNotFound:
            raise ModelNotFound(
                f"knowledge collection {collection!r} has no revision {revision!r}", model=name
            ) from None
        ref = index_ref(manifest)
        with self._lock:
            index = self._indexes.get(ref.block_id)
        if index is None:
            index = decode_index(self.store.read(ref.block_id))
            with self._lock:
                self._indexes[ref.block_id] = index
        return manifest, index

    def shards(self, index: IndexInfo, numbers: tuple[int, ...]) -> dict[int, Shard]:
        """Decoded shards by number (blocking: reads and parses blocks not in memory)."""
        return {n: self._shard(index.shards[n]) for n in numbers}

    def _shard(self, info: ShardInfo) -> Shard:
        with self._lock:
            shard = self._shards.get(info.block_id)
            if shard is not None:
                self._shards.move_to_end(info.block_id)
                return shard
        shard = decode_shard(self.store.read(info.block_id))
        with self._lock:
            if info.block_id not in self._shards:
                self._shards[info.block_id] = shard
                self._shard_bytes += shard.nbytes
            while self._shard_bytes > self.max_shard_bytes and len(self._shards) > 1:
                _, old = self._shards.popitem(last=False)
                self._shard_bytes -= old.nbytes
        return shard


T = TypeVar("T")
knowledge_key: Final = web.AppKey("knowledge", OriginKnowledge)


def add_knowledge_routes(app: web.Application, doc: ApiDoc) -> None:
    """Register /v1/knowledge/* on the origin app (after its store and catalogue are set)."""
    app[knowledge_key] = OriginKnowledge(app[catalogue_key], app[store_key])
    r = app.router
    collection = f"{{collection:{ROUTE_COLLECTION}}}"
    doc.route(
        r,
        "GET",
        "/v1/knowledge",
        list_collections,
        summary="Knowledge collections and their sizes",
        schema=CollectionList,
    )
    doc.route(
        r,
        "GET",
        f"/v1/knowledge/{collection}",
        describe_collection,
        summary="A collection's index: model, dims, shards (block ids, sizes, chunk counts)",
        query={"revision": {"type": "string"}},
        schema=CollectionInfo,
    )
    doc.route(
        r,
        "POST",
        f"/v1/knowledge/{collection}/query",
        query_collection,
        summary="Top-k chunks by inner product inside the nprobe shards nearest the query",
        body=QueryBody,
        schema=AnswerInfo,
    )


async def list_collections(request: web.Request) -> web.Response:
    """GET /v1/knowledge → {"collections": [...]}."""
    catalogue = request.app[catalogue_key]

    def rows() -> list[CollectionSummary]:
        out = []
        for m in catalogue.list_models():
            if not m.name.startswith(KNOWLEDGE_PREFIX) or "main" not in m.tags:
                continue
            manifest = catalogue.manifest_by_commit(m.tags["main"])
            if manifest.metadata.get("kind") != KNOWLEDGE_KIND:
                continue
            meta = manifest.metadata
            out.append(
                CollectionSummary(
                    collection=m.name.removeprefix(KNOWLEDGE_PREFIX),
                    name=m.name,
                    revision=manifest.revision,
                    total_bytes=manifest.total_size,
                    model=_opt(meta.get("model"), str),
                    dims=_opt(meta.get("dims"), int),
                    chunks=_opt(meta.get("chunks"), int),
                    shards=_opt(meta.get("shards"), int),
                )
            )
        return out

    return message_response(CollectionList(await asyncio.to_thread(rows)))


async def describe_collection(request: web.Request) -> web.Response:
    """GET /v1/knowledge/{collection}."""
    kn = request.app[knowledge_key]
    revision = request.query.get("revision", "main")
    manifest, index = await asyncio.to_thread(kn.collection, request.match_info["collection"], revision)
    return message_response(describe(manifest, index))


async def query_collection(request: web.Request) -> web.Response:
    """POST /v1/knowledge/{collection}/query → the top-k chunks."""
    kn = request.app[knowledge_key]
    async with kn.gate.slot():  # a bounded queue: 503 + Retry-After beyond it
        query = decode_query_body(await read_body(request, limit=MAX_QUERY_BODY_BYTES))
        manifest, index = await asyncio.to_thread(kn.collection, request.match_info["collection"], query.revision)
        vector = query.embedding
        if vector is None:
            assert query.text is not None
            vector = await kn.gate.run(embed_query, query.text, model=index.model)
        probe = route_query(index, vector, query.nprobe)
        shards = await kn.gate.run(kn.shards, index, probe)
        hits = await kn.gate.run(search_shards, shards, vector, query.k)
    return message_response(make_answer(index, manifest.revision, probe, hits, served="origin", node="origin"))


def _opt(value: object, kind: type[T]) -> T | None:
    """A metadata value of the expected type, else None (metadata is free-form)."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None
