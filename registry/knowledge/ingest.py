"""Ingesting a RAG knowledge collection: documents → chunks → embeddings → IVF shards → blocks.

The flow mirrors `publish`: everything is read, chunked, embedded and serialised locally
first; then the origin is asked which blocks it lacks, only those are uploaded, and the
collection is published as the manifest `knowledge/<collection>` (see
`cachenet.knowledge.formats` for the formats). Re-ingesting a changed corpus keeps the shard
layout stable so that only shards whose chunks changed become new blocks:

- the previous revision's centroids are reused (no re-training) unless `rebuild` is
  asked or the shard count changes, so an unchanged chunk lands in the same shard;
- the previous vectors are reused for chunk texts seen before, so an unchanged chunk has
  bit-identical bytes whatever batch the embedding model would have put it in;
- chunks inside a shard are ordered by (source, position), never by ingest order.
"""

import asyncio
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np

from cachenet.blockid import digest_of
from cachenet.errors import BadInput, BlockCorrupt, ModelNotFound
from cachenet.knowledge.embedder import Embedder, load_embedder
from cachenet.knowledge.formats import (
    INDEX_PATH,
    KNOWLEDGE_KIND,
    ChunkInfo,
    IndexInfo,
    ShardInfo,
    Vectors,
    collection_model_name,
    decode_index,
    decode_shard,
    encode_index,
    encode_shard,
    index_ref,
)
from cachenet.manifest import BlockRef, FileManifest, ModelManifest
from registry.chunking import DEFAULT_MAX_BLOCK_BYTES
from registry.publish import HttpTarget, LocalTarget, PublishTarget

__all__ = (
    "CollectionBuild",
    "DEFAULT_CHUNK_WORDS",
    "DEFAULT_OVERLAP_WORDS",
    "DOCUMENT_SUFFIXES",
    "DocumentInfo",
    "IngestReport",
    "assign_shards",
    "build_collection",
    "default_shard_count",
    "ingest_paths",
    "read_documents",
    "split_into_chunks",
    "train_centroids",
)

DEFAULT_CHUNK_WORDS: Final = 120
DEFAULT_OVERLAP_WORDS: Final = 20
DOCUMENT_SUFFIXES: Final = (".txt", ".md", ".markdown", ".jsonl")
KMEANS_ITERATIONS: Final = 25
MAX_SHARDS: Final = 4096


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """One document: a stable source name and its text."""

    source: str
    text: str


@dataclass(frozen=True, slots=True)
class CollectionBuild:
    """A collection ready to upload: its manifest, index and every block's bytes."""

    manifest: ModelManifest
    index: IndexInfo
    blocks: dict[str, tuple[BlockRef, bytes]]


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What an ingest did: documents, chunks, shards, and how much was new."""

    collection: str
    name: str
    revision: str
    documents: int
    chunks: int
    shards: int
    stored_shards: int
    total_bytes: int
    stored_bytes: int
    embedded_chunks: int
    reused_centroids: bool
    created: bool

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {k: getattr(self, k) for k in self.__slots__}


# -- documents and chunks ------------------------------------------------------------------


def read_documents(paths: Sequence[Path]) -> list[DocumentInfo]:
    """Text, Markdown and JSON-lines documents under `paths` (folders are walked, sorted).

    A `.jsonl` line is an object with "text" (or "content") and optionally "id" or
    "source"; its document is named `<file>#<id>` (else `<file>#<line number>`). Raises
    `BadInput` for a missing path, an unsupported file named directly, a malformed
    JSON line or two documents with the same name.
    """
    docs: list[DocumentInfo] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES)
            docs.extend(d for f in files for d in _read_file(f, f.relative_to(path).as_posix()))
        elif path.is_file():
            if path.suffix.lower() not in DOCUMENT_SUFFIXES:
                raise BadInput(f"{path}: unsupported document type; use {', '.join(DOCUMENT_SUFFIXES)}")
            docs.extend(_read_file(path, path.name))
        else:
            raise BadInput(f"{path} does not exist")
    seen: set[str] = set()
    for d in docs:
        if d.source in seen:
            raise BadInput(f"two documents are named {d.source!r}; give each file or JSON line a distinct name")
        seen.add(d.source)
    return docs


def split_into_chunks(doc: DocumentInfo, *, chunk_size: int, overlap: int) -> list[ChunkInfo]:
    """Windows of `chunk_size` words, each starting `chunk_size - overlap` words after the last."""
    if chunk_size <= 0 or not 0 <= overlap < chunk_size:
        raise BadInput(f"need chunk_size > 0 and 0 <= overlap < chunk_size, got {chunk_size} and {overlap}")
    words = doc.text.split()
    step = chunk_size - overlap
    chunks = []
    for position, start in enumerate(range(0, max(1, len(words) - overlap), step)):
        piece = words[start : start + chunk_size]
        if piece:
            chunks.append(ChunkInfo(doc.source, position, " ".join(piece)))
    return chunks


# -- IVF partitioning ----------------------------------------------------------------------


def default_shard_count(chunks: int) -> int:
    """About sqrt(n) shards (the usual IVF list count), at least 1."""
    return max(1, min(MAX_SHARDS, round(math.sqrt(chunks))))


def train_centroids(vectors: Vectors, k: int, *, seed: int, iterations: int = KMEANS_ITERATIONS) -> Vectors:
    """Spherical k-means (k-means++ seeding, unit-length centroids) over unit vectors.

    Objective: maximise the sum of inner products between each vector and its centroid
    (Dhillon & Modha, "Concept decompositions for large sparse text data", 2001). Lloyd
    iterations until assignments stop changing or `iterations`; an emptied cluster is
    re-seeded with the vector worst served by its centroid. O(iterations · n · k · d).
    Deterministic for a given `seed`.
    """
    n = len(vectors)
    if n == 0:
        raise BadInput("cannot partition an empty collection")
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    dist = np.clip(1.0 - vectors @ vectors[chosen[0]], 0.0, None)
    for _ in range(1, k):
        total = float(dist.sum())
        pick = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
        chosen.append(pick)
        dist = np.minimum(dist, np.clip(1.0 - vectors @ vectors[pick], 0.0, None))
    centroids = vectors[chosen].astype(np.float32).copy()
    labels = np.full(n, -1)
    for _ in range(iterations):
        scores = vectors @ centroids.T
        new = scores.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        best = scores[np.arange(n), labels]
        for j in range(k):
            members = vectors[labels == j]
            if len(members) == 0:
                worst = int(best.argmin())
                centroids[j] = vectors[worst]
                best[worst] = np.inf
                continue
            mean = members.sum(axis=0)
            norm = float(np.linalg.norm(mean))
            centroids[j] = mean / norm if norm > 0 else members[0]
    return centroids


def assign_shards(vectors: Vectors, centroids: Vectors) -> np.ndarray[Any, np.dtype[np.intp]]:
    """The shard of each vector: its highest inner-product centroid (lowest number on ties)."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.intp)
    return np.asarray((vectors @ centroids.T).argmax(axis=1), dtype=np.intp)


def build_collection(
    collection: str,
    chunks: Sequence[ChunkInfo],
    vectors: Vectors,
    centroids: Vectors,
    *,
    model: str,
    chunk_size: int,
    overlap: int,
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
) -> CollectionBuild:
    """Cut chunks into one shard per centroid, serialise them and the index, make the manifest."""
    name = collection_model_name(collection)
    labels = assign_shards(vectors, centroids)
    blocks: dict[str, tuple[BlockRef, bytes]] = {}
    files: list[FileManifest] = []
    infos: list[ShardInfo] = []
    for number in range(len(centroids)):
        rows = sorted(
            (int(r) for r in np.flatnonzero(labels == number)),
            key=lambda r: (chunks[r].source, chunks[r].position),
        )
        data = encode_shard([chunks[r] for r in rows], vectors[rows].reshape(len(rows), vectors.shape[1]))
        if len(data) > max_block_size:
            raise BadInput(
                f"shard {number} of {collection} is {len(data)} bytes, "
                f"over the {max_block_size}-byte block limit; "
                "ingest with more --shards"
            )
        path = f"shards/{number:05d}.shard"
        ref = _add_block(blocks, files, path, data)
        infos.append(ShardInfo(path, ref.block_id, ref.blake3, ref.size, len(rows)))
    index = IndexInfo(
        collection,
        model,
        int(vectors.shape[1]),
        centroids.astype(np.float32),
        tuple(infos),
        len(chunks),
        chunk_size,
        overlap,
        max(1, math.ceil(len(infos) / 4)),
    )
    _add_block(blocks, files, INDEX_PATH, encode_index(index))
    metadata = {
        "kind": KNOWLEDGE_KIND,
        "collection": collection,
        "model": model,
        "dims": index.dims,
        "chunks": len(chunks),
        "shards": len(infos),
        "chunk_size": chunk_size,
        "overlap": overlap,
    }
    return CollectionBuild(ModelManifest(name, tuple(files), None, metadata), index, blocks)


# -- ingest --------------------------------------------------------------------------------


async def ingest_paths(
    paths: Sequence[Path],
    *,
    collection: str,
    target: PublishTarget,
    embedder: Embedder | None = None,
    chunk_size: int = DEFAULT_CHUNK_WORDS,
    overlap: int = DEFAULT_OVERLAP_WORDS,
    shards: int | None = None,
    seed: int = 0,
    rebuild: bool = False,
    tag: str = "main",
) -> IngestReport:
    """Ingest documents as collection `collection`, storing only blocks the origin lacks.

    Raises `BadInput` (bad documents or options), `ModelNotFound`, `IntegrityError`
    (a previous block that does not match its hashes), `Unauthorized` (wrong token).
    """
    name = collection_model_name(collection)
    docs = await asyncio.to_thread(read_documents, paths)
    chunks = [c for d in docs for c in split_into_chunks(d, chunk_size=chunk_size, overlap=overlap)]
    if not chunks:
        raise BadInput(f"no text to ingest in {', '.join(str(p) for p in paths)}")
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise BadInput(f"shards must be 1..{MAX_SHARDS}, got {shards}")
    if embedder is None:
        embedder = await asyncio.to_thread(load_embedder)
    previous = await _read_previous(target, name)
    known: dict[str, Vectors] = {}
    if previous is not None and previous[0].model == embedder.model_name:
        known = previous[1]
    todo = sorted({c.text for c in chunks if c.text not in known})
    fresh = await asyncio.to_thread(embedder.embed, todo) if todo else np.zeros((0, embedder.dims), np.float32)
    known.update(zip(todo, fresh, strict=True))
    vectors = np.stack([known[c.text] for c in chunks]).astype(np.float32)
    k = shards or (len(previous[0].shards) if previous is not None else default_shard_count(len(chunks)))
    reuse = (
        previous is not None
        and not rebuild
        and len(previous[0].shards) == k
        and previous[0].model == embedder.model_name
        and previous[0].dims == vectors.shape[1]
    )
    if reuse:
        assert previous is not None
        centroids = previous[0].centroids
    else:
        centroids = await asyncio.to_thread(train_centroids, vectors, k, seed=seed)
    build = await asyncio.to_thread(
        build_collection,
        collection,
        chunks,
        vectors,
        centroids,
        model=embedder.model_name,
        chunk_size=chunk_size,
        overlap=overlap,
    )
    missing = await target.missing(list(build.blocks))
    for block_id in sorted(missing):
        ref, data = build.blocks[block_id]
        await target.upload(ref, memoryview(data))
    result = await target.publish(build.manifest, tag)
    shard_ids = {s.block_id for s in build.index.shards}
    return IngestReport(
        collection=collection,
        name=name,
        revision=str(result["revision"]),
        documents=len(docs),
        chunks=len(chunks),
        shards=len(build.index.shards),
        stored_shards=len(shard_ids & missing),
        total_bytes=sum(ref.size for ref, _ in build.blocks.values()),
        stored_bytes=sum(build.blocks[b][0].size for b in missing),
        embedded_chunks=len(todo),
        reused_centroids=reuse,
        created=bool(result.get("created", True)),
    )


async def _read_previous(target: PublishTarget, name: str) -> tuple[IndexInfo, dict[str, Vectors]] | None:
    """The published index of `name` and its vectors by chunk text, or None when there is none."""
    manifest = await _previous_manifest(target, name)
    if manifest is None:
        return None
    index = decode_index(await _read_block(target, index_ref(manifest)))
    vectors: dict[str, Vectors] = {}
    for info in index.shards:
        shard = decode_shard(await _read_block(target, info.ref))
        for chunk, vec in zip(shard.chunks, shard.vectors, strict=True):
            vectors.setdefault(chunk.text, vec)
    return index, vectors


async def _previous_manifest(target: PublishTarget, name: str) -> ModelManifest | None:
    try:
        if isinstance(target, LocalTarget):
            return await asyncio.to_thread(target.catalogue.manifest, name, "main")
        if isinstance(target, HttpTarget):
            async with target.session.get(f"{target.url}/v1/models/{name}/revisions/main") as resp:
                if resp.status == 404:
                    return None
                resp.raise_for_status()
                return ModelManifest.from_json(json.loads(await resp.read()))
    except ModelNotFound:
        return None
    return None  # another kind of target: ingest from scratch


async def _read_block(target: PublishTarget, ref: BlockRef) -> bytes:
    if isinstance(target, LocalTarget):
        data = await asyncio.to_thread(target.store.read, ref.block_id)
    elif isinstance(target, HttpTarget):
        async with target.session.get(f"{target.url}/v1/blocks/{ref.block_id}") as resp:
            try:
                resp.raise_for_status()
            except aiohttp.ClientResponseError as e:
                raise ModelNotFound(f"block {ref.block_id} of the previous revision: {e}") from e
            data = await resp.read()
    else:  # pragma: no cover - _previous_manifest returned None for other targets
        raise BadInput(f"cannot read blocks from {type(target).__name__}")
    got = await asyncio.to_thread(digest_of, data)
    if (got.block_id, got.blake3) != (ref.block_id, ref.blake3):
        raise BlockCorrupt(
            f"block {ref.block_id} of the previous revision does not match its hashes",
            block_id=ref.block_id,
        )
    return data


def _add_block(
    blocks: dict[str, tuple[BlockRef, bytes]], files: list[FileManifest], path: str, data: bytes
) -> BlockRef:
    digest = digest_of(data)
    ref = BlockRef(digest.block_id, digest.blake3, digest.size)
    blocks.setdefault(ref.block_id, (ref, data))
    files.append(FileManifest(path, len(data), hashlib.sha256(data).hexdigest(), (ref,)))
    return ref


def _read_file(path: Path, name: str) -> list[DocumentInfo]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path} as UTF-8 text: {e}") from None
    if path.suffix.lower() != ".jsonl":
        return [DocumentInfo(name, raw)] if raw.strip() else []
    docs = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{number}: not JSON: {e}") from None
        text = obj.get("text", obj.get("content")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise BadInput(f"{path}:{number}: each line must be an object with a string 'text'")
        key = obj.get("id", obj.get("source", number))
        if text.strip():
            docs.append(DocumentInfo(f"{name}#{key}", text))
    return docs
