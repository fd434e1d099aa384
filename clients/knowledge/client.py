"""The RAG client: top-k queries to the origin or an edge node, optionally embedding locally."""

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from cachenet.errors import BadInput
from cachenet.httpclient import DEFAULT_TIMEOUT, raise_for_status
from cachenet.knowledge.embedder import load_embedder
from cachenet.knowledge.formats import collection_model_name
from cachenet.knowledge.search import DEFAULT_K, HitInfo
from cachenet.protocol.headers import CELL_HEADER
from clients.config import DEFAULT_SOURCE

__all__ = ("AnswerInfo", "KnowledgeClient", "query_sync")


@dataclass(frozen=True, slots=True)
class AnswerInfo:
    """A query's answer: the hits, best first, and how the server answered."""

    collection: str
    revision: str
    served: str
    node: str
    nprobe: int
    shards: tuple[int, ...]
    hits: tuple[HitInfo, ...]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "AnswerInfo":
        """Parse a server's answer."""
        return cls(
            str(doc["collection"]),
            str(doc["revision"]),
            str(doc["served"]),
            str(doc["node"]),
            int(doc["nprobe"]),
            tuple(int(s) for s in doc["shards"]),
            tuple(HitInfo.from_json(h) for h in doc["results"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON."""
        return {
            "collection": self.collection,
            "revision": self.revision,
            "served": self.served,
            "node": self.node,
            "nprobe": self.nprobe,
            "shards": list(self.shards),
            "results": [h.to_json() for h in self.hits],
        }


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
        body: dict[str, Any] = {"k": k}
        if text is not None:
            body["text"] = text
        else:
            body["embedding"] = embedding
        if nprobe is not None:
            body["nprobe"] = nprobe
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        headers = {CELL_HEADER: cell} if cell else {}
        url = f"{self.source}/v1/knowledge/{collection}/query"
        async with self.session.post(url, json=body, headers=headers) as resp:
            await raise_for_status(resp)
            return AnswerInfo.from_json(await resp.json())

    async def describe(self, collection: str) -> dict[str, Any]:
        """The collection's index summary (and, from an edge node, the shards it holds)."""
        async with self.session.get(f"{self.source}/v1/knowledge/{collection}") as resp:
            await raise_for_status(resp)
            doc: dict[str, Any] = await resp.json()
            return doc

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
