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
"""

import base64
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from cachenet.errors import BadInput, ManifestInvalid
from cachenet.manifest import BlockRef, ModelManifest, canonical_json
from cachenet.names import validate_model_name
from cachenet.protocol.knowledge import CollectionInfo, ShardSummary

__all__ = (
    "ChunkInfo",
    "INDEX_FORMAT",
    "INDEX_PATH",
    "IndexInfo",
    "KNOWLEDGE_KIND",
    "KNOWLEDGE_PREFIX",
    "SHARD_FORMAT",
    "Shard",
    "ShardInfo",
    "Vectors",
    "collection_model_name",
    "decode_index",
    "decode_shard",
    "describe",
    "encode_index",
    "encode_shard",
    "index_ref",
)

Vectors = npt.NDArray[np.float32]

KNOWLEDGE_PREFIX: Final = "knowledge/"
KNOWLEDGE_KIND: Final = "knowledge"
INDEX_PATH: Final = "index.json"
INDEX_FORMAT: Final = "cachenet.knowledge.index/1"
SHARD_FORMAT: Final = "cachenet.knowledge.shard/1"
_SHARD_MAGIC: Final = b"CNKS"
_HEADER_LEN: Final = struct.Struct("<I")
_MAX_SHARD_HEADER_BYTES: Final = 256 * 1024 * 1024


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


def describe(manifest: ModelManifest, index: IndexInfo, *, held: list[int] | None = None) -> CollectionInfo:
    """A collection's description (index summary); an edge node names the shards it holds."""
    return CollectionInfo(
        collection=index.collection,
        name=manifest.name,
        revision=manifest.revision,
        model=index.model,
        dims=index.dims,
        chunks=index.chunks,
        chunk_size=index.chunk_size,
        overlap=index.overlap,
        default_nprobe=index.default_nprobe,
        shards=[ShardSummary(i, s.path, s.block_id, s.size, s.count) for i, s in enumerate(index.shards)],
        total_bytes=index.total_bytes,
        held=held,
    )
