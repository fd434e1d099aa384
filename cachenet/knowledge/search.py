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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from cachenet.errors import BadInput
from cachenet.knowledge.formats import IndexInfo, Shard, Vectors
from cachenet.protocol.codec import decode_json
from cachenet.protocol.knowledge import AnswerInfo, HitInfo, QueryBody

__all__ = (
    "MAX_QUERY_BODY_BYTES",
    "QueryInfo",
    "decode_query_body",
    "make_answer",
    "parse_query",
    "route_query",
    "search_shards",
)

MAX_QUERY_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """A validated query: text or embedding, k, nprobe and an optional deadline."""

    text: str | None
    embedding: Vectors | None = field(compare=False)
    k: int
    nprobe: int | None
    deadline_ms: float | None
    revision: str = "main"


def parse_query(body: QueryBody, *, dims: int | None = None) -> QueryInfo:
    """The validated query of a decoded body: exactly one of text or embedding, a usable vector.

    Raises `BadInput`.
    """
    if (body.text is None) == (body.embedding is None):
        raise BadInput("give exactly one of 'text' or 'embedding'")
    if body.text is not None and not body.text.strip():
        raise BadInput("'text' must not be blank")
    vec: Vectors | None = None
    if body.embedding is not None:
        wide = np.asarray(body.embedding, dtype=np.float64)
        # Beyond float32's range the cast would overflow to inf (issue #9's schemathesis run found 1e300).
        if not np.all(np.isfinite(wide)) or np.abs(wide).max() > np.finfo(np.float32).max:
            raise BadInput("'embedding' values must be finite float32 numbers")
        vec = wide.astype(np.float32)
        if dims is not None and vec.shape != (dims,):
            raise BadInput(f"'embedding' has {vec.shape[0]} dims; the collection has {dims}")
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise BadInput("'embedding' must be finite and non-zero")
        vec = (vec / np.float32(norm)).astype(np.float32)
    return QueryInfo(body.text, vec, body.k, body.nprobe, body.deadline_ms, body.revision)


def decode_query_body(data: bytes) -> QueryInfo:
    """Parse a query request body (JSON bytes, at most MAX_QUERY_BODY_BYTES); raises `BadInput`."""
    if len(data) > MAX_QUERY_BODY_BYTES:
        raise BadInput(f"query body is over the {MAX_QUERY_BODY_BYTES}-byte limit")
    return parse_query(decode_json(data, QueryBody, what="the query"))


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


def make_answer(
    index: IndexInfo,
    revision: str,
    probe: Sequence[int],
    hits: Sequence[HitInfo],
    *,
    served: str,
    node: str,
) -> AnswerInfo:
    """The answer to a query (the same shape from the origin and from edge nodes)."""
    return AnswerInfo(
        collection=index.collection,
        revision=revision,
        model=index.model,
        nprobe=len(probe),
        shards=list(probe),
        served=served,
        node=node,
        results=list(hits),
    )
