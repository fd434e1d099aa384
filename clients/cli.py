"""The device's commands: `cachenet pull NAME[@REV]` and `cachenet rag query`."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Final

from cachenet.cli import command_group
from cachenet.localcluster import cluster_url
from cachenet.units import parse_rate
from clients.config import DEFAULT_SOURCE, PullSettings

__all__ = ("register",)

SOURCES_ENV: Final = "CACHENET_SOURCES"
CELL_ENV: Final = "CACHENET_CELL"
_DEFAULTS: Final = PullSettings()
_EXCERPT_CHARS: Final = 160
_DEFAULT_K: Final = 10  # cachenet.knowledge.search.DEFAULT_K, which imports numpy


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `pull` to the `cachenet` parser."""
    p = sub.add_parser(
        "pull",
        help="pull a model onto this device (verified blocks, local block store, several sources)",
        description="Fetch the blocks of NAME[@REV] the local block store lacks from one or more "
        "origin/edge servers in parallel, verify each, and write the model's files atomically.",
    )
    p.add_argument("model", metavar="NAME[@REV]", help="model name, optionally @tag or @commit (default main)")
    p.add_argument("--out", type=Path, help="folder to write the files to (default: ./<model name>)")
    p.add_argument(
        "--source",
        dest="sources",
        action="append",
        help=f"origin or edge node URL, repeatable (default ${SOURCES_ENV}, comma-separated, else {DEFAULT_SOURCE})",
    )
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="for a LoRA model: write the base with the adapter merged into its weights",
    )
    p.add_argument(
        "--store",
        type=Path,
        help="local block store (default $CACHENET_HOME, else ~/.cache/cachenet)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=_DEFAULTS.concurrency,
        help=f"blocks in flight at once (default {_DEFAULTS.concurrency})",
    )
    p.add_argument(
        "--per-source",
        type=int,
        default=_DEFAULTS.per_source_connections,
        help=f"connections per source (default {_DEFAULTS.per_source_connections})",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=_DEFAULTS.stall_timeout_s,
        help=f"seconds without bytes before a transfer moves to another source (default {_DEFAULTS.stall_timeout_s:g})",
    )
    p.add_argument(
        "--blocks-only",
        dest="write",
        action="store_false",
        help="only fetch the blocks into the local store; write no files",
    )
    p.add_argument(
        "--multicast",
        choices=("auto", "on", "off"),
        default="auto",
        help="receive blocks other devices want too from the node's multicast session: auto (when a "
        "source offers it, else unicast), on (fail without it), off (default auto)",
    )
    p.add_argument(
        "--multicast-interface",
        metavar="ADDR",
        help="IPv4 address of the local interface to join multicast groups on "
        "(default: loopback for a node on loopback, else the kernel's choice)",
    )
    p.add_argument(
        "--link-rate",
        type=parse_rate,
        help="what this device's link takes, e.g. 20Mbit: the node keeps faster multicast groups from waiting for it",
    )
    p.add_argument(
        "--verify-files",
        action="store_true",
        help="read each written file once more and check its SHA-256 (every block is verified anyway)",
    )
    p.add_argument(
        "--cell",
        default=os.environ.get(CELL_ENV) or None,
        help=f"this device's cell (a user id of the topology), counted with the pull's demand (default ${CELL_ENV})",
    )
    p.add_argument("--no-fsync", dest="fsync", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_pull)

    rag = command_group(sub, "rag", help="RAG knowledge collections: ingest documents, query top-k chunks")
    query = rag.add_parser("query", help="top-k chunks of a collection for a text")
    query.add_argument("collection", help="collection name")
    query.add_argument("text", help="the question or passage to search for")
    query.add_argument("--k", type=int, default=_DEFAULT_K, help=f"results (default {_DEFAULT_K})")
    query.add_argument("--nprobe", type=int, help="shards to search (default: the collection's)")
    query.add_argument("--source", default=None, help=f"origin or edge node URL (default {DEFAULT_SOURCE})")
    query.add_argument(
        "--embed-locally",
        action="store_true",
        help="embed the text on this machine and send only the embedding",
    )
    query.add_argument("--deadline-ms", type=float, help="an edge node forwards the query when fetching is slower")
    query.add_argument("--json", action="store_true", help="print the answer as JSON")
    query.set_defaults(func=_rag_query)


def _pull(args: argparse.Namespace) -> int:
    import asyncio

    from clients.multicast.session import MulticastOptions
    from clients.puller import pull

    sources = (
        args.sources
        or [u for u in os.environ.get(SOURCES_ENV, "").split(",") if u.strip()]
        or [cluster_url("origin") or DEFAULT_SOURCE]
    )
    settings = PullSettings(
        concurrency=args.concurrency,
        per_source_connections=args.per_source,
        stall_timeout_s=args.stall_timeout,
        fsync=args.fsync,
        cell=args.cell,
    )
    out = None
    if args.write:
        out = args.out if args.out is not None else Path(args.model.partition("@")[0].rsplit("/", 1)[-1])
    report = asyncio.run(
        pull(
            args.model,
            sources=[s.strip() for s in sources],
            out_dir=out,
            store=args.store,
            merge_lora=args.merge_lora,
            settings=settings,
            multicast=MulticastOptions(mode=args.multicast, interface=args.multicast_interface, rate=args.link_rate),
            progress=False if args.no_progress or args.json else None,
            env=os.environ,
            verify_files=args.verify_files,
        )
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    sys.stdout.flush()
    return 0


def _rag_query(args: argparse.Namespace) -> int:
    import asyncio

    from cachenet.protocol.codec import encode_json
    from cachenet.protocol.knowledge import AnswerInfo
    from clients.knowledge.client import KnowledgeClient

    source = args.source or os.environ.get("CACHENET_RAG_SOURCE") or cluster_url("origin") or DEFAULT_SOURCE

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
        print(json.dumps(json.loads(encode_json(answer)), indent=2))
        return 0
    print(f"{answer.collection}@{answer.revision[:12]}: {answer.served} by {answer.node}, shards {list(answer.shards)}")
    for rank, hit in enumerate(answer.results, start=1):
        text = " ".join(hit.text.split())
        excerpt = text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"
        print(f"{rank:3}. {hit.score:.4f}  {hit.source}#{hit.position}  {excerpt}")
    return 0
