"""Knowledge formats and algorithms without servers: chunks, documents, shards, k-means, search."""

import json
from pathlib import Path

import numpy as np
import pytest

from cachenet.errors import BadInput, ManifestInvalid
from cachenet.knowledge.formats import (
    ChunkInfo,
    IndexInfo,
    ShardInfo,
    decode_index,
    decode_shard,
    encode_index,
    encode_shard,
)
from cachenet.knowledge.search import QueryInfo, decode_query_body, parse_query, route_query, search_shards
from cachenet.protocol.codec import decode_json
from cachenet.protocol.knowledge import QueryBody
from registry.knowledge.ingest import (
    DocumentInfo,
    assign_shards,
    build_collection,
    read_documents,
    split_into_chunks,
    train_centroids,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def test_chunks_have_the_configured_size_and_overlap() -> None:
    doc = DocumentInfo("a.txt", " ".join(f"w{i}" for i in range(25)))
    chunks = split_into_chunks(doc, chunk_size=10, overlap=3)
    assert [c.position for c in chunks] == [0, 1, 2, 3]  # starts 0, 7, 14, 21
    assert chunks[0].text.split() == [f"w{i}" for i in range(10)]
    assert chunks[1].text.split()[:3] == chunks[0].text.split()[-3:]
    assert chunks[-1].text.split()[-1] == "w24"
    assert split_into_chunks(DocumentInfo("b", "one two"), chunk_size=10, overlap=3)[0].text == "one two"
    assert split_into_chunks(DocumentInfo("c", "   "), chunk_size=10, overlap=3) == []
    with pytest.raises(BadInput):
        split_into_chunks(doc, chunk_size=5, overlap=5)


def test_documents_are_read_from_text_markdown_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("alpha text")
    (tmp_path / "d" / "b.md").write_text("# beta\n\ntext")
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\0\1")
    (tmp_path / "d" / "c.jsonl").write_text(
        json.dumps({"id": "x1", "text": "gamma"}) + "\n\n" + json.dumps({"text": "delta"}) + "\n"
    )
    docs = read_documents([tmp_path / "d"])
    assert [(d.source, d.text) for d in docs] == [
        ("a.txt", "alpha text"),
        ("b.md", "# beta\n\ntext"),
        ("c.jsonl#x1", "gamma"),
        ("c.jsonl#3", "delta"),
    ]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(BadInput):
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(BadInput):
        read_documents([tmp_path / "missing"])


def test_a_shard_round_trips_and_the_same_content_gives_the_same_bytes() -> None:
    rng = np.random.default_rng(0)
    chunks = [ChunkInfo("doc.md", i, f"chunk {i} ünïcode") for i in range(5)]
    vectors = _unit(rng, 5, 8)
    data = encode_shard(chunks, vectors)
    assert encode_shard(list(chunks), vectors.copy()) == data
    shard = decode_shard(data)
    assert shard.chunks == tuple(chunks)
    assert np.array_equal(shard.vectors, vectors)
    assert decode_shard(encode_shard([], np.zeros((0, 8), np.float32))).chunks == ()
    with pytest.raises(ManifestInvalid):
        decode_shard(data[:-4])
    with pytest.raises(ManifestInvalid):
        decode_shard(b"XXXX" + data[4:])


def test_an_index_round_trips() -> None:
    rng = np.random.default_rng(1)
    shards = (
        ShardInfo("shards/00000.shard", "0" * 32, "1" * 64, 10, 2),
        ShardInfo("shards/00001.shard", "2" * 32, "3" * 64, 12, 3),
    )
    index = IndexInfo("c", "m", 4, _unit(rng, 2, 4), shards, 5, 10, 2, 1)
    back = decode_index(encode_index(index))
    assert back == index and np.array_equal(back.centroids, index.centroids)
    with pytest.raises(ManifestInvalid):
        decode_index(b'{"format": "other"}')


def test_kmeans_is_deterministic_and_assigns_every_vector() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 300, 16)
    a = train_centroids(vectors, 6, seed=5)
    assert np.array_equal(a, train_centroids(vectors, 6, seed=5))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    labels = assign_shards(vectors, a)
    assert set(labels.tolist()) == set(range(6))
    assert train_centroids(vectors[:3], 10, seed=0).shape == (3, 16)


def test_search_over_every_shard_equals_exact_search() -> None:
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 400, 32)
    chunks = [ChunkInfo(f"d{i}", 0, f"text {i}") for i in range(400)]
    build = build_collection(
        "c",
        chunks,
        vectors,
        train_centroids(vectors, 7, seed=0),
        model="m",
        chunk_size=10,
        overlap=0,
    )
    shards = {n: decode_shard(build.blocks[s.block_id][1]) for n, s in enumerate(build.index.shards)}
    for q in _unit(rng, 20, 32):
        exact = np.argsort(-(vectors @ q), kind="stable")[:10]
        probe = route_query(build.index, q, len(shards))
        hits = search_shards({n: shards[n] for n in probe}, q, 10)
        assert [h.text for h in hits] == [f"text {i}" for i in exact]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    one = route_query(build.index, vectors[0], 1)
    assert len(one) == 1 and "text 0" in [c.text for c in shards[one[0]].chunks]


def _query(doc: object, dims: int | None = None) -> QueryInfo:
    return parse_query(decode_json(json.dumps(doc).encode(), QueryBody), dims=dims)


def test_queries_are_validated() -> None:
    assert _query({"text": "hi"}).k == 10
    assert decode_query_body(b'{"text": "hi", "k": 4}').k == 4
    q = _query({"embedding": [3.0, 4.0], "k": 3, "nprobe": 2, "deadline_ms": 50}, dims=2)
    assert q.embedding is not None and np.allclose(q.embedding, [0.6, 0.8]) and q.k == 3
    bad: object
    for bad in (
        {},
        {"text": "a", "embedding": [1.0]},
        {"text": ""},
        {"text": "   "},
        {"text": "a", "k": 0},
        {"embedding": [0.0, 0.0]},
        {"embedding": ["x"]},
        {"embedding": [True, 1.0]},
        {"embedding": [1e300, 1.0]},
        {"embedding": [10**400, 1.0]},
        {"embedding": [1.0, 2.0, 3.0]},
        {"text": "a", "deadline_ms": -1},
        {"text": "a", "revision": "main\n"},
        [],
    ):
        with pytest.raises(BadInput):
            _query(bad, dims=2)
