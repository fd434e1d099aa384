"""`cachenet rag ingest` and `cachenet rag query`: knowledge collections on the command line."""

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from cachenet.knowledge.search import DEFAULT_K
from clients.knowledge.client import DEFAULT_RAG_SOURCE, AnswerInfo, KnowledgeClient

__all__ = ("register",)

_EXCERPT_CHARS = 160


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `rag` command group to the `cachenet` parser."""
    rag = sub.add_parser("rag", help="RAG knowledge collections: ingest documents, query top-k chunks")
    rag_sub = rag.add_subparsers(dest="rag_command", metavar="ACTION", required=True)

    ingest = rag_sub.add_parser(
        "ingest",
        help="chunk, embed and store documents as a knowledge collection",
        description="Split text, Markdown and JSON-lines documents into chunks, embed them with "
        "all-MiniLM-L6-v2, partition them into IVF shards (k-means) and store the shards as "
        "content-addressed blocks; a re-ingest stores only the shards that changed.",
    )
    ingest.add_argument("collection", help="collection name (letters, digits, '.', '_', '-')")
    ingest.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="files (.txt, .md, .jsonl) or folders of them",
    )
    ingest.add_argument("--origin", help="URL of a running origin (uses its operator API)")
    ingest.add_argument("--token", help="operator token for --origin (default: $CACHENET_TOKEN)")
    ingest.add_argument("--data", type=Path, help="write straight into an origin data folder instead")
    ingest.add_argument("--db", help="catalogue URL with --data (default: SQLite in the folder)")
    ingest.add_argument("--chunk-size", type=int, default=None, help="words per chunk (default 120)")
    ingest.add_argument("--overlap", type=int, default=None, help="words shared by consecutive chunks (default 20)")
    ingest.add_argument(
        "--shards",
        type=int,
        help="IVF shards (default: the existing collection's, else ~sqrt(chunks))",
    )
    ingest.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    ingest.add_argument(
        "--rebuild",
        action="store_true",
        help="re-train the centroids instead of reusing the published ones",
    )
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(func=_ingest)

    query = rag_sub.add_parser("query", help="top-k chunks of a collection for a text")
    query.add_argument("collection", help="collection name")
    query.add_argument("text", help="the question or passage to search for")
    query.add_argument("--k", type=int, default=DEFAULT_K, help=f"results (default {DEFAULT_K})")
    query.add_argument("--nprobe", type=int, help="shards to search (default: the collection's)")
    query.add_argument("--source", default=None, help=f"origin or edge node URL (default {DEFAULT_RAG_SOURCE})")
    query.add_argument(
        "--embed-locally",
        action="store_true",
        help="embed the text on this machine and send only the embedding",
    )
    query.add_argument("--deadline-ms", type=float, help="an edge node forwards the query when fetching is slower")
    query.add_argument("--json", action="store_true", help="print the answer as JSON")
    query.set_defaults(func=_query)


def _ingest(args: argparse.Namespace) -> int:
    from cachenet.units import format_bytes
    from registry.knowledge.ingest import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP_WORDS, ingest_paths
    from registry.publish import open_target

    async def run() -> dict[str, Any]:
        target = open_target(origin=args.origin, token=args.token, data=args.data, db=args.db)
        try:
            report = await ingest_paths(
                args.paths,
                collection=args.collection,
                target=target,
                chunk_size=args.chunk_size or DEFAULT_CHUNK_WORDS,
                overlap=DEFAULT_OVERLAP_WORDS if args.overlap is None else args.overlap,
                shards=args.shards,
                seed=args.seed,
                rebuild=args.rebuild,
            )
        finally:
            await target.close()
        return report.to_json()

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"ingested {report['collection']} = {report['name']}@{report['revision']}: "
            f"{report['documents']} documents, {report['chunks']} chunks "
            f"({report['embedded_chunks']} embedded), "
            f"{report['shards']} shards, {format_bytes(report['total_bytes'])} in all; "
            f"stored {report['stored_shards']} new shards, {format_bytes(report['stored_bytes'])}"
        )
    return 0


def _query(args: argparse.Namespace) -> int:
    source = args.source or os.environ.get("CACHENET_RAG_SOURCE") or DEFAULT_RAG_SOURCE

    async def run() -> AnswerInfo:
        async with KnowledgeClient(source) as client:
            return await client.query(
                args.collection,
                args.text,
                k=args.k,
                nprobe=args.nprobe,
                deadline_ms=args.deadline_ms,
                embed_locally=args.embed_locally,
            )

    answer = asyncio.run(run())
    if args.json:
        print(json.dumps(answer.to_json(), indent=2))
        return 0
    print(f"{answer.collection}@{answer.revision[:12]}: {answer.served} by {answer.node}, shards {list(answer.shards)}")
    for rank, hit in enumerate(answer.hits, start=1):
        text = " ".join(hit.text.split())
        excerpt = text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"
        print(f"{rank:3}. {hit.score:.4f}  {hit.source}#{hit.position}  {excerpt}")
    return 0
