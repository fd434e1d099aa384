"""Messages of the knowledge API (origin and edge nodes alike): queries, answers, collection descriptions."""

from typing import Annotated, Final

import msgspec

from cachenet.protocol.patterns import REVISION, schema_pattern

__all__ = (
    "AnswerInfo",
    "CollectionInfo",
    "CollectionList",
    "CollectionSummary",
    "DEFAULT_K",
    "HitInfo",
    "MAX_EMBEDDING_DIMS",
    "MAX_K",
    "MAX_QUERY_TEXT_CHARS",
    "QueryBody",
    "ShardSummary",
)

DEFAULT_K: Final = 10
MAX_K: Final = 1000
MAX_QUERY_TEXT_CHARS: Final = 8192
MAX_EMBEDDING_DIMS: Final = 8192
_MAX_NPROBE: Final = 1 << 20

Revision = Annotated[str, msgspec.Meta(pattern=schema_pattern(REVISION), max_length=128)]


class QueryBody(msgspec.Struct, frozen=True):
    """POST /v1/knowledge/{collection}/query: a text or an embedding, k, and how hard to look."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_TEXT_CHARS)] | None = None
    embedding: Annotated[list[float], msgspec.Meta(min_length=1, max_length=MAX_EMBEDDING_DIMS)] | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = DEFAULT_K
    nprobe: Annotated[int, msgspec.Meta(ge=1, le=_MAX_NPROBE)] | None = None
    deadline_ms: Annotated[float, msgspec.Meta(gt=0, lt=1e9)] | None = None
    revision: Revision = "main"


class HitInfo(msgspec.Struct, frozen=True):
    """One search result: a chunk, its score (inner product) and where it lives."""

    text: str
    score: float
    source: str
    position: int
    shard: int


class AnswerInfo(msgspec.Struct, frozen=True):
    """A query's answer: the hits, best first, and how the server answered (local, fetched, forwarded, origin)."""

    collection: str
    revision: str
    model: str
    nprobe: int
    shards: list[int]
    served: str
    node: str
    results: list[HitInfo]


class ShardSummary(msgspec.Struct, frozen=True):
    """One shard of a collection as its description lists it."""

    shard: int
    path: str
    block_id: str
    size: int
    count: int


class CollectionInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """GET /v1/knowledge/{collection}: the index summary (an edge node adds the shards it holds)."""

    collection: str
    name: str
    revision: str
    model: str
    dims: int
    chunks: int
    chunk_size: int
    overlap: int
    default_nprobe: int
    shards: list[ShardSummary]
    total_bytes: int = msgspec.field(name="bytes")
    held: list[int] | None = None


class CollectionSummary(msgspec.Struct, frozen=True):
    """One collection in the origin's list."""

    collection: str
    name: str
    revision: str
    total_bytes: int = msgspec.field(name="bytes")
    model: str | None = None
    dims: int | None = None
    chunks: int | None = None
    shards: int | None = None


class CollectionList(msgspec.Struct, frozen=True):
    """GET /v1/knowledge: the collections the origin holds."""

    collections: list[CollectionSummary]
