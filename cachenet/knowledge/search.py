"""Knowledge queries: parsing, IVF routing and exact top-k search inside the routed shards.

Search: embeddings are L2-normalised, so inner product = cosine similarity. A query is
routed to the `nprobe` centroids with the highest inner product (IVF, Jégou et al.,
"Product quantization for nearest neighbor search", TPAMI 2011, without the
quantisation), then scored exactly by a numpy matrix-vector product over every vector
of those shards: O(nprobe · n/K · d) per query. Exact brute force inside the shards keeps
the answer a pure function of (shard bytes, query vector), which is what lets an edge
node prove it answers exactly like the origin; at the sizes one shard holds (thousands
of 384-dim vectors) a BLAS `sgemv` scores ~10^8 dims/s per core, well above what HTTP and
the embedding model allow (see bench/rag_search.py), so no approximate graph index
(HNSW) or extra dependency (faiss) is needed.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from cachenet.errors import BadInput
from cachenet.knowledge.formats import IndexInfo, Shard, Vectors
from cachenet.names import validate_revision

__all__ = (
    "DEFAULT_K",
    "HitInfo",
    "MAX_K",
    "MAX_QUERY_BODY_BYTES",
    "QueryInfo",
    "answer_json",
    "decode_query_body",
    "parse_query",
    "query_body_schema",
    "route_query",
    "search_shards",
)

DEFAULT_K: Final = 10
MAX_K: Final = 1000
MAX_QUERY_TEXT_CHARS: Final = 8192
MAX_QUERY_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HitInfo:
    """One search result: a chunk, its score (inner product) and where it lives."""

    text: str
    score: float
    source: str
    position: int
    shard: int

    def to_json(self) -> dict[str, Any]:
        """The hit as JSON."""
        return {
            "text": self.text,
            "score": self.score,
            "source": self.source,
            "position": self.position,
            "shard": self.shard,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "HitInfo":
        """Parse a hit sent by a server."""
        return cls(
            str(doc["text"]),
            float(doc["score"]),
            str(doc["source"]),
            int(doc["position"]),
            int(doc["shard"]),
        )


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """A validated query: text or embedding, k, nprobe and an optional deadline."""

    text: str | None
    embedding: Vectors | None = field(compare=False)
    k: int
    nprobe: int | None
    deadline_ms: float | None
    revision: str = "main"


def parse_query(doc: object, *, dims: int | None = None) -> QueryInfo:
    """Validate a query body {"text" | "embedding", "k", "nprobe", "deadline_ms", "revision"}.

    Raises `BadInput` (or `InvalidName` for a malformed revision).
    """
    if not isinstance(doc, dict):
        raise BadInput("a query is a JSON object with 'text' or 'embedding'")
    text, embedding = doc.get("text"), doc.get("embedding")
    if (text is None) == (embedding is None):
        raise BadInput("give exactly one of 'text' or 'embedding'")
    vec: Vectors | None = None
    if text is not None and (not isinstance(text, str) or not text.strip() or len(text) > MAX_QUERY_TEXT_CHARS):
        raise BadInput(f"'text' must be a non-empty string of at most {MAX_QUERY_TEXT_CHARS} characters")
    if embedding is not None:
        if not isinstance(embedding, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in embedding
        ):
            raise BadInput("'embedding' must be a list of numbers")
        try:
            wide = np.asarray(embedding, dtype=np.float64)
        except OverflowError:
            raise BadInput("'embedding' values must be finite float32 numbers") from None
        # Beyond float32's range the cast would overflow to inf (issue #9's schemathesis run found 1e300).
        if not np.all(np.isfinite(wide)) or (wide.size and np.abs(wide).max() > np.finfo(np.float32).max):
            raise BadInput("'embedding' values must be finite float32 numbers")
        vec = wide.astype(np.float32)
        if dims is not None and vec.shape != (dims,):
            raise BadInput(f"'embedding' has {vec.shape[0]} dims; the collection has {dims}")
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise BadInput("'embedding' must be finite and non-zero")
        vec = (vec / np.float32(norm)).astype(np.float32)
    k = _int_field(doc, "k", DEFAULT_K, 1, MAX_K)
    nprobe = _int_field(doc, "nprobe", None, 1, 1 << 20)
    deadline = doc.get("deadline_ms")
    if deadline is not None and (
        not isinstance(deadline, int | float) or isinstance(deadline, bool) or not 0 < deadline < 1e9
    ):
        raise BadInput(f"'deadline_ms' must be a positive number of milliseconds, got {deadline!r}")
    revision = validate_revision(doc.get("revision") or "main")
    return QueryInfo(text, vec, k, nprobe, None if deadline is None else float(deadline), revision)


def decode_query_body(data: bytes) -> QueryInfo:
    """Parse a query request body (JSON bytes, at most MAX_QUERY_BODY_BYTES); raises `BadInput`."""
    if len(data) > MAX_QUERY_BODY_BYTES:
        raise BadInput(f"query body is over the {MAX_QUERY_BODY_BYTES}-byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad UTF-8/JSON, huge integers, deep nesting
        raise BadInput(f"query body is not JSON: {e}") from None
    return parse_query(doc)


def query_body_schema() -> dict[str, Any]:
    """OpenAPI request body of a knowledge query (the origin's and edge nodes')."""
    return {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "embedding": {"type": "array", "items": {"type": "number"}},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                    "nprobe": {"type": "integer", "minimum": 1},
                    "deadline_ms": {"type": "number"},
                    "revision": {"type": "string"},
                },
            }
        }
    }


def route_query(index: IndexInfo, query: Vectors, nprobe: int | None) -> tuple[int, ...]:
    """The `nprobe` shards whose centroids have the highest inner product with `query`.

    Ties go to the lower shard number, so every node routes a query the same way.
    """
    if query.shape != (index.dims,):
        raise BadInput(f"query has {query.shape} dims; the collection has {index.dims}")
    n = len(index.shards)
    probes = min(n, nprobe or index.default_nprobe)
    scores = index.centroids @ query
    order = np.lexsort((np.arange(n), -scores))
    return tuple(int(i) for i in order[:probes])


def search_shards(shards: Mapping[int, Shard], query: Vectors, k: int) -> list[HitInfo]:
    """Exact top-k by inner product over every vector of `shards` (shard number → shard).

    Ties are broken by (shard number, row), so the result is a pure function of the shards
    and the query.
    """
    scores: list[Vectors] = []
    keys: list[tuple[int, int]] = []
    for number in sorted(shards):
        shard = shards[number]
        if len(shard) == 0:
            continue
        s = shard.vectors @ query
        top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
        scores.append(s[top])
        keys.extend((number, int(row)) for row in top)
    if not keys:
        return []
    flat = np.concatenate(scores)
    numbers = np.array([key[0] for key in keys])
    rows = np.array([key[1] for key in keys])
    order = np.lexsort((rows, numbers, -flat))[:k]
    hits = []
    for i in order:
        number, row = keys[int(i)]
        chunk = shards[number].chunks[row]
        hits.append(HitInfo(chunk.text, float(flat[i]), chunk.source, chunk.position, number))
    return hits


def answer_json(
    index: IndexInfo,
    revision: str,
    probe: Sequence[int],
    hits: Sequence[HitInfo],
    *,
    served: str,
    node: str,
) -> dict[str, Any]:
    """The JSON answer to a query (the same shape from the origin and from edge nodes)."""
    return {
        "collection": index.collection,
        "revision": revision,
        "model": index.model,
        "nprobe": len(probe),
        "shards": list(probe),
        "served": served,
        "node": node,
        "results": [h.to_json() for h in hits],
    }


def _int_field(doc: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadInput(f"{key!r} must be an integer from {lo} to {hi}, got {value!r}")
    return value
