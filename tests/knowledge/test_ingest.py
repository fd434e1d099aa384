"""Ingesting collections: a changed corpus stores only changed shards; `cachenet rag` commands."""

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from cachenet.cli import EXIT_NOT_FOUND, main
from cachenet.knowledge.embedder import Embedder
from cachenet.knowledge.formats import decode_index, index_ref
from clients.knowledge.client import KnowledgeClient
from registry.keys import catalogue_key, store_key
from registry.knowledge.ingest import IngestReport, ingest_paths
from registry.publish import HttpTarget
from tests.conftest import OPERATOR_TOKEN
from tests.knowledge.conftest import (
    CHUNK_WORDS,
    COLLECTION,
    OVERLAP_WORDS,
    SHARDS,
    EdgeFactory,
    passage,
    url_of,
)


async def _ingest(origin: TestServer, corpus: Path, embedder: Embedder) -> IngestReport:
    target = HttpTarget(url_of(origin), OPERATOR_TOKEN)
    try:
        return await ingest_paths(
            [corpus],
            collection=COLLECTION,
            target=target,
            embedder=embedder,
            chunk_size=CHUNK_WORDS,
            overlap=OVERLAP_WORDS,
            shards=SHARDS,
            seed=1,
        )
    finally:
        await target.close()


def _shard_ids(origin: TestServer) -> list[str]:
    catalogue = origin.app[catalogue_key]
    manifest = catalogue.manifest(f"knowledge/{COLLECTION}")
    index = decode_index(origin.app[store_key].read(index_ref(manifest).block_id))
    return [s.block_id for s in index.shards]


async def test_reingesting_a_changed_corpus_stores_only_the_changed_shards(
    knowledge_origin: TestServer,
    ingested: tuple[Path, Path, IngestReport],
    embedder: Embedder,
    corpus_docs: dict[str, str],
    tmp_path: Path,
) -> None:
    corpus = shutil.copytree(ingested[0], tmp_path / "corpus")
    before = await asyncio.to_thread(_shard_ids, knowledge_origin)

    same = await _ingest(knowledge_origin, corpus, embedder)
    assert (same.stored_shards, same.stored_bytes, same.embedded_chunks) == (0, 0, 0)
    assert same.revision == ingested[2].revision and not same.created and same.reused_centroids

    edited = "sailing/02-03.md"
    new_text = corpus_docs[edited].replace("has worked on sailing", "has raced dinghies and worked on sailing")
    (corpus / edited).write_text(new_text)
    changed = await _ingest(knowledge_origin, corpus, embedder)
    after = await asyncio.to_thread(_shard_ids, knowledge_origin)
    assert changed.created and changed.revision != same.revision and changed.embedded_chunks == 1
    assert 1 <= changed.stored_shards <= 2 < SHARDS
    assert sum(a != b for a, b in zip(before, after, strict=True)) == changed.stored_shards
    assert changed.stored_bytes < changed.total_bytes / 3

    async with KnowledgeClient(url_of(knowledge_origin)) as client:
        answer = await client.query(COLLECTION, passage(new_text), k=3)
    assert (answer.results[0].source, answer.results[0].text) == (edited, passage(new_text))
    assert answer.revision == changed.revision
    report = knowledge_origin.app[catalogue_key].check(knowledge_origin.app[store_key].has)
    assert report.ok


async def test_the_rag_commands_ingest_and_query(
    origin_server: TestServer,
    edge_factory: EdgeFactory,
    embedder: Embedder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Tides\n\nThe harbour of Kotor floods twice a day when the spring tide turns.")
    (docs / "faq.txt").write_text("Sourdough needs a starter of flour and water fed every morning.")
    (docs / "more.jsonl").write_text(
        json.dumps({"id": "q1", "text": "A seismograph in Oulu recorded the aftershock at dawn."})
        + "\n"
        + json.dumps({"id": "q2", "text": "The grandmaster resigned after the bishop endgame went wrong."})
        + "\n"
    )
    argv = [
        "rag",
        "ingest",
        "notes",
        str(docs),
        "--origin",
        url_of(origin_server),
        "--token",
        OPERATOR_TOKEN,
        "--shards",
        "2",
        "--chunk-size",
        "50",
        "--overlap",
        "5",
        "--json",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["documents"], report["chunks"], report["shards"], report["stored_shards"]) == (
        4,
        4,
        2,
        2,
    )

    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    question = "The grandmaster resigned after the bishop endgame went wrong."
    for extra in ([], ["--embed-locally"]):
        argv = [
            "rag",
            "query",
            "notes",
            question,
            "--k",
            "2",
            "--nprobe",
            "2",
            "--source",
            url_of(edge),
            "--json",
        ]
        assert await asyncio.to_thread(main, argv + extra) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["results"][0]["source"] == "more.jsonl#q2" and len(answer["results"]) == 2
    argv = ["rag", "query", "notes", "flour and water", "--source", url_of(origin_server)]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "faq.txt#0" in out.splitlines()[1]
    assert await asyncio.to_thread(main, ["rag", "query", "missing", "x", "--source", url_of(edge)]) == EXIT_NOT_FOUND
