"""The RAG client: top-k queries to the origin or an edge node, optionally embedding locally."""

import asyncio
from types import TracebackType
from typing import Any, Self

import aiohttp

from cachenet.errors import BadInput
from cachenet.httpclient import DEFAULT_TIMEOUT, raise_for_status
from cachenet.knowledge.embedder import load_embedder
from cachenet.knowledge.formats import collection_model_name
from cachenet.protocol.codec import decode_json, encode_json
from cachenet.protocol.headers import CELL_HEADER
from cachenet.protocol.knowledge import DEFAULT_K, AnswerInfo, CollectionInfo, QueryBody
from clients.config import DEFAULT_SOURCE

__all__ = ("KnowledgeClient", "query_sync")


class KnowledgeClient:
    """Queries knowledge collections on one server (origin or edge node)."""

    def __init__(self, source: str = DEFAULT_SOURCE, *, session: aiohttp.ClientSession | None = None) -> None:
        self.source = source.rstrip("/")
        self._own_session = session is None
        self.session = session or aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT)

    async def query(
        self,
        collection: str,
        text: str | None = None,
        *,
        embedding: list[float] | None = None,
        k: int = DEFAULT_K,
        nprobe: int | None = None,
        deadline_ms: float | None = None,
        embed_locally: bool = False,
        cell: str | None = None,
    ) -> AnswerInfo:
        """The top-k chunks for `text` (or `embedding`).

        With `embed_locally` the text is embedded here (all-MiniLM-L6-v2) and only the
        embedding is sent. Raises `BadInput`, `NotFound`, `UpstreamUnavailable`.
        """
        collection_model_name(collection)
        if (text is None) == (embedding is None):
            raise BadInput("give exactly one of text or embedding")
        if embed_locally and text is not None:
            embedder = await asyncio.to_thread(load_embedder)
            embedding = (await asyncio.to_thread(embedder.embed, [text]))[0].tolist()
            text = None
        body = QueryBody(text=text, embedding=embedding, k=k, nprobe=nprobe, deadline_ms=deadline_ms)
        headers = {"Content-Type": "application/json", **({CELL_HEADER: cell} if cell else {})}
        url = f"{self.source}/v1/knowledge/{collection}/query"
        async with self.session.post(url, data=encode_json(body), headers=headers) as resp:
            await raise_for_status(resp)
            return decode_json(await resp.read(), AnswerInfo, what=f"{self.source}'s answer")

    async def describe(self, collection: str) -> CollectionInfo:
        """The collection's index summary (and, from an edge node, the shards it holds)."""
        async with self.session.get(f"{self.source}/v1/knowledge/{collection}") as resp:
            await raise_for_status(resp)
            return decode_json(await resp.read(), CollectionInfo, what=f"{self.source}'s description")

    async def close(self) -> None:
        """Close the session if this client opened it."""
        if self._own_session:
            await self.session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def query_sync(source: str, collection: str, text: str, **options: Any) -> AnswerInfo:
    """`KnowledgeClient.query` for synchronous callers (not from inside an event loop)."""

    async def run() -> AnswerInfo:
        async with KnowledgeClient(source) as client:
            return await client.query(collection, text, **options)

    return asyncio.run(run())
