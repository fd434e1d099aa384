"""Commands of the origin: `origin serve`, `publish`, `models list|show`, `rag ingest`.

Heavy modules (aiohttp, the SQL catalogue, the publisher) load only inside the command that runs.
"""

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from cachenet.cli import command_group
from cachenet.config import load_settings
from cachenet.errors import BadInput
from cachenet.names import parse_model_ref, validate_model_name
from cachenet.server.options import add_tls_arguments
from cachenet.units import count, format_bytes, parse_size
from registry.config import DEFAULT_ORIGIN_PORT, OriginSettings

__all__ = ("register",)

_ORIGIN_HELP = (
    "origin URL (default: the local cluster's, from $CACHENET_ORIGIN or DATA/cluster.json "
    f"that `cachenet up` writes, else http://127.0.0.1:{DEFAULT_ORIGIN_PORT})"
)
_TOKEN_HELP = "operator token for --origin (default: $CACHENET_TOKEN, else DATA/token of the local cluster)"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the registry's subcommands to the `cachenet` parser."""
    origin = sub.add_parser("origin", help="the origin server that holds every block")
    origin_sub = origin.add_subparsers(dest="origin_command", metavar="ACTION", required=True)
    serve = origin_sub.add_parser("serve", help="run the origin server")
    serve.add_argument("--config", type=Path, help="settings file (TOML or YAML)")
    serve.add_argument("--data", dest="data_dir", type=Path, help="data folder (default cachenet-data/origin)")
    serve.add_argument(
        "--db", dest="db_url", help="SQLAlchemy URL of the catalogue (default: SQLite in the data folder)"
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port to listen on (default {DEFAULT_ORIGIN_PORT})")
    serve.add_argument(
        "--token",
        help="operator bearer token (default: $CACHENET_TOKEN; without one, operator routes refuse every call)",
    )
    serve.add_argument("--max-block-size", type=parse_size, help="largest block accepted (default 64MiB)")
    mirror = serve.add_argument_group("mirroring an upstream Hugging Face-compatible hub")
    mirror.add_argument("--upstream", dest="upstream_url", help="hub to pull through from, e.g. https://huggingface.co")
    mirror.add_argument("--upstream-token-env", help="environment variable holding the upstream token")
    mirror.add_argument(
        "--upstream-revalidate",
        dest="upstream_revalidate_s",
        type=float,
        help="seconds between revalidations of a branch or tag (default 60)",
    )
    mirror.add_argument(
        "--allow", action="append", help="repository glob that may be mirrored (repeatable; default all)"
    )
    mirror.add_argument("--deny", action="append", help="repository glob that is refused (repeatable)")
    mirror.add_argument("--max-file-size", type=parse_size, help="largest file mirrored, e.g. 20GB")
    mirror.add_argument(
        "--require-commit", action="store_true", default=None, help="serve only revisions pinned by a 40-digit commit"
    )
    add_tls_arguments(serve)
    serve.set_defaults(func=_origin_serve)

    pub = sub.add_parser("publish", help="cut a model folder into blocks and publish it")
    pub.add_argument("path", type=Path, help="model folder (Hugging Face layout or PEFT adapter) or one file")
    pub.add_argument("--name", required=True, help="model name, e.g. org/model")
    pub.add_argument("--base", help="base model NAME[@REV] of a LoRA adapter (default: from adapter_config.json)")
    pub.add_argument("--tag", default="main", help="tag to move to the new revision (default main)")
    pub.add_argument("--origin", help="URL of a running origin (default: the local cluster's, when one runs)")
    pub.add_argument("--token", help=_TOKEN_HELP)
    pub.add_argument("--data", type=Path, help="publish straight into an origin data folder instead")
    pub.add_argument("--db", help="catalogue URL with --data (default: SQLite in the folder)")
    pub.add_argument("--max-block-size", type=parse_size, default=None, help="largest block (default 64MiB)")
    pub.add_argument("--json", action="store_true", help="print the report as JSON")
    pub.add_argument("--no-progress", action="store_true", help="no progress bars")
    pub.set_defaults(func=_publish)

    models = sub.add_parser("models", help="list and inspect published models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    for action, helptext in (("list", "list models"), ("show", "show one model's files, blocks and sharing")):
        p = models_sub.add_parser(action, help=helptext)
        if action == "show":
            p.add_argument("name", help="model NAME[@REV]")
        p.add_argument("--origin", help=_ORIGIN_HELP)
        p.add_argument("--data", type=Path, help="read an origin data folder directly instead")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_models_list if action == "list" else _models_show)

    rag = command_group(sub, "rag", help="RAG knowledge collections: ingest documents, query top-k chunks")
    ingest = rag.add_parser(
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
    ingest.add_argument("--origin", help="URL of a running origin (default: the local cluster's, when one runs)")
    ingest.add_argument("--token", help=_TOKEN_HELP)
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
    ingest.set_defaults(func=_rag_ingest)


def _origin_serve(args: argparse.Namespace) -> int:
    from cachenet.server.serve import run_app, tls_context
    from registry.app import create_app
    from registry.servinglock import serving

    keys = (
        "data_dir",
        "db_url",
        "host",
        "port",
        "token",
        "max_block_size",
        "upstream_url",
        "upstream_token_env",
        "upstream_revalidate_s",
        "max_file_size",
        "require_commit",
    )
    overrides: dict[str, Any] = {k: getattr(args, k) for k in keys}
    overrides["allow"] = tuple(args.allow) if args.allow else None
    overrides["deny"] = tuple(args.deny) if args.deny else None
    settings = load_settings(OriginSettings, args.config, os.environ, overrides)
    ssl_context = tls_context(args)
    url = f"{'https' if ssl_context else 'http'}://{settings.host}:{settings.port}"
    with serving(settings.data_dir, url):  # `publish --data` into this folder is refused while it runs
        return run_app(
            create_app(settings), host=settings.host, port=settings.port, name="origin", ssl_context=ssl_context
        )


def _publish(args: argparse.Namespace) -> int:
    from registry.publish import open_target, publish_path

    if not args.path.exists():
        raise BadInput(f"{args.path} does not exist")
    settings = load_settings(OriginSettings, None, os.environ, {"max_block_size": args.max_block_size})

    async def run() -> dict[str, Any]:
        target = open_target(
            origin=args.origin, token=args.token, data=args.data, db=args.db, max_block_size=args.max_block_size
        )
        try:
            report = await publish_path(
                args.path,
                name=args.name,
                target=target,
                base=args.base,
                tag=args.tag,
                max_block_size=settings.max_block_size,
                progress=False if args.no_progress else None,
            )
        finally:
            await target.close()
        return report.to_json()

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"published {report['name']}@{report['tag']} = {report['revision']}: "
            f"{count(report['files'], 'file')}, {format_bytes(report['total_bytes'])} in all; "
            f"stored {format_bytes(report['stored_bytes'])} ({count(report['stored_blocks'], 'new block')}), "
            f"deduplicated {format_bytes(report['deduplicated_bytes'])}"
        )
    return 0


def _rag_ingest(args: argparse.Namespace) -> int:
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
            f"{count(report['documents'], 'document')}, {count(report['chunks'], 'chunk')} "
            f"({report['embedded_chunks']} embedded), "
            f"{count(report['shards'], 'shard')}, {format_bytes(report['total_bytes'])} in all; "
            f"stored {count(report['stored_shards'], 'new shard')}, {format_bytes(report['stored_bytes'])}"
        )
    return 0


def _models_list(args: argparse.Namespace) -> int:
    models = asyncio.run(_fetch_models(args))
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models published yet")
        return 0
    print(f"{'NAME':40} {'SIZE':>10}  {'SHARED':>10}  {'REVISIONS':>9}  TAGS  SOURCE")
    for m in models:
        latest = m["revisions"][0] if m["revisions"] else None
        size = format_bytes(latest["total_size"]) if latest else "-"
        tags = ", ".join(f"{t}={c[:12]}" for t, c in sorted(m["tags"].items()))
        origin = m["source"] + (f" from {m['upstream']}" if m.get("upstream") else "")
        shared = format_bytes(m.get("shared_bytes", 0))
        print(f"{m['name']:40} {size:>10}  {shared:>10}  {len(m['revisions']):>9}  [{tags}]  {origin}")
    return 0


def _models_show(args: argparse.Namespace) -> int:
    name, revision = parse_model_ref(args.name)
    info = asyncio.run(_fetch_model_detail(args, name, revision))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m = info["manifest"]
    print(f"{m['name']} @ {m['revision']}")
    if m["base"]:
        print(f"  base: {m['base']['name']} @ {m['base']['revision']}")
    for f in m["files"]:
        blocks = count(len(f["blocks"]), "block")
        print(f"  {f['path']:50} {format_bytes(f['size']):>10}  {blocks:>10}  sha256 {f['sha256'][:16]}…")
    print(f"  distinct blocks: {info['blocks']}, {format_bytes(info['unique_bytes'])}")
    for other, shared in sorted(info["shared_with"].items(), key=lambda kv: -kv[1]):
        print(f"  shares {format_bytes(shared)} with {other}")
    return 0


async def _fetch_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    from registry.publish import LocalTarget

    if args.data:
        import msgspec

        from registry.source import list_model_entries

        target = LocalTarget(load_settings(OriginSettings, None, os.environ, {"data_dir": args.data}))
        try:
            entries = await asyncio.to_thread(list_model_entries, target.catalogue)
            return list(msgspec.to_builtins(entries))
        finally:
            await target.close()
    import aiohttp

    from cachenet.httpclient import DEFAULT_TIMEOUT, raise_for_status

    url = args.origin or f"http://127.0.0.1:{DEFAULT_ORIGIN_PORT}"
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT) as session, session.get(f"{url}/v1/models") as resp:
        await raise_for_status(resp)
        models: list[dict[str, Any]] = (await resp.json())["models"]
        return models


async def _fetch_model_detail(args: argparse.Namespace, name: str, revision: str) -> dict[str, Any]:
    import aiohttp

    from cachenet.httpclient import DEFAULT_TIMEOUT, raise_for_status
    from cachenet.manifest import ModelManifest
    from registry.publish import LocalTarget

    validate_model_name(name)
    if args.data:
        target = LocalTarget(load_settings(OriginSettings, None, os.environ, {"data_dir": args.data}))
        try:
            manifest = await asyncio.to_thread(target.catalogue.manifest, name, revision)
            shared = await asyncio.to_thread(target.catalogue.shared_bytes, manifest.revision)
        finally:
            await target.close()
    else:
        url = args.origin or f"http://127.0.0.1:{DEFAULT_ORIGIN_PORT}"
        async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT) as session:
            async with session.get(f"{url}/v1/models/{name}/revisions/{revision}") as resp:
                await raise_for_status(resp)
                manifest = ModelManifest.from_json(await resp.json())
            async with session.get(f"{url}/v1/models/{name}/revisions/{manifest.revision}/sharing") as resp:
                await raise_for_status(resp)
                shared = (await resp.json())["shared_with"]
    unique = manifest.unique_blocks()
    return {
        "manifest": manifest.to_json(),
        "blocks": len(unique),
        "unique_bytes": sum(r.size for r in unique.values()),
        "shared_with": shared,
    }
