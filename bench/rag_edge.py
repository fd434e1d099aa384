"""Knowledge at the edge: hit ratio, local vs forwarded latency and IVF recall under Zipf queries.

Set-up, all in one process on loopback (one event loop, queries sent one at a time):
a real origin holding a collection ingested from Python's own stdlib docstrings (one
JSON-lines document per documented function/class, embedded with all-MiniLM-L6-v2);
a *backhaul* between the edge node and the origin, emulated by a small HTTP relay that
adds a one-way delay in each direction and paces every response through one shared
token bucket (`--backhaul-ms`, `--backhaul-rate`); a real edge node whose origin URL is
the relay, so shard fetches and forwarded queries both cross the backhaul. For each
capacity (10 %..100 % of the collection's bytes, plus its small index block) a fresh edge
node answers a Zipf-distributed stream of queries (the first words of a chunk, embedded
on the client and sent as embeddings, so latency is the cache's, not the model's), each
with `deadline_ms` and a fixed `nprobe`. Recall@10 compares the IVF answer (what origin and
edge return) with exact search over the whole collection.
"""

import argparse
import asyncio
import inspect
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
from aiohttp import web

from bench.machine import write_result
from cachenet.edge.app import create_app as create_edge_app
from cachenet.edge.config import EdgeSettings
from cachenet.edge.keys import cache_key, edge_knowledge_key
from cachenet.edge.knowledge.shards import FetchEstimator
from cachenet.knowledge.embedder import load_embedder
from cachenet.knowledge.formats import decode_index, decode_shard, index_ref
from cachenet.knowledge.search import route_query, search_shards
from cachenet.server.pacer import TokenBucket
from registry.app import create_app as create_origin_app
from registry.catalogue import Catalogue
from registry.config import OriginSettings
from registry.knowledge.ingest import ingest_paths
from registry.publish import LocalTarget

__all__ = ("main",)

COLLECTION: Final = "stdlib"
STDLIB_MODULES: Final = (
    "os",
    "os.path",
    "sys",
    "re",
    "json",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "shutil",
    "subprocess",
    "threading",
    "asyncio",
    "socket",
    "ssl",
    "http.client",
    "urllib.request",
    "urllib.parse",
    "email.message",
    "csv",
    "sqlite3",
    "datetime",
    "time",
    "calendar",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "math",
    "string",
    "textwrap",
    "difflib",
    "unicodedata",
    "struct",
    "codecs",
    "io",
    "tempfile",
    "glob",
    "fnmatch",
    "zipfile",
    "tarfile",
    "gzip",
    "bz2",
    "lzma",
    "hashlib",
    "hmac",
    "secrets",
    "base64",
    "binascii",
    "pickle",
    "copy",
    "pprint",
    "reprlib",
    "enum",
    "dataclasses",
    "typing",
    "abc",
    "contextlib",
    "inspect",
    "dis",
    "ast",
    "tokenize",
    "logging",
    "argparse",
    "configparser",
    "unittest",
    "doctest",
    "heapq",
    "bisect",
    "array",
    "weakref",
    "queue",
    "sched",
    "selectors",
    "signal",
    "mmap",
    "ipaddress",
    "xml.etree.ElementTree",
    "html",
    "html.parser",
    "mimetypes",
    "uuid",
    "locale",
    "gettext",
    "platform",
    "traceback",
    "warnings",
    "operator",
    "numbers",
    "cmath",
    "zlib",
    "shlex",
    "getpass",
    "concurrent.futures",
    "multiprocessing",
    "tkinter",
    "turtle",
    "wave",
    "colorsys",
    "graphlib",
    "zoneinfo",
    "tomllib",
    "pdb",
    "timeit",
    "trace",
    "tracemalloc",
    "gc",
    "importlib",
    "pkgutil",
    "runpy",
    "venv",
    "zipapp",
    "ftplib",
    "smtplib",
    "imaplib",
    "poplib",
    "socketserver",
    "http.server",
    "http.cookies",
    "xmlrpc.client",
    "wsgiref",
)


def main() -> None:
    """Run the benchmark and write bench/results/rag_edge.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1200, help="stdlib docstrings to ingest (default 1200)")
    parser.add_argument("--shards", type=int, default=48)
    parser.add_argument("--nprobe", type=int, default=3)
    parser.add_argument("--queries", type=int, default=500, help="measured queries per capacity")
    parser.add_argument("--warmup", type=int, default=150, help="queries before measuring")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over chunks")
    parser.add_argument("--deadline-ms", type=float, default=60.0)
    parser.add_argument("--backhaul-ms", type=float, default=10.0, help="one-way backhaul delay")
    parser.add_argument("--backhaul-rate", type=float, default=20e6 / 8, help="backhaul bytes/s (default 20 Mbit/s)")
    parser.add_argument("--capacities", default="0.1,0.25,0.5,0.75,1.0")
    args = parser.parse_args()
    asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cachenet-rag-bench-") as tmp:
        root = Path(tmp)
        corpus = _write_corpus(root / "stdlib.jsonl", args.docs)
        origin_settings = OriginSettings(data_dir=root / "origin", token="bench", fsync=False)
        embedder = load_embedder()
        target = LocalTarget(origin_settings)
        started = time.perf_counter()
        report = await ingest_paths(
            [corpus],
            collection=COLLECTION,
            target=target,
            embedder=embedder,
            chunk_size=60,
            overlap=10,
            shards=args.shards,
            seed=0,
        )
        ingest_s = time.perf_counter() - started
        await target.close()
        print(f"ingested {report.chunks} chunks into {report.shards} shards in {ingest_s:.1f} s")
        index, shards = _load_collection(origin_settings)
        chunks = [(n, r) for n in sorted(shards) for r in range(len(shards[n]))]
        rng = np.random.default_rng(0)
        ranks = rng.permutation(len(chunks))
        weights = 1.0 / np.arange(1, len(chunks) + 1) ** args.zipf
        picks = rng.choice(len(chunks), size=args.warmup + args.queries, p=weights / weights.sum())
        texts = {}
        for p in set(picks.tolist()):
            n, r = chunks[int(ranks[p])]
            texts[p] = " ".join(shards[n].chunks[r].text.split()[:20])
        order = sorted(texts)
        vectors = dict(
            zip(
                order,
                await asyncio.to_thread(embedder.embed, [texts[p] for p in order]),
                strict=True,
            )
        )
        recall = _recall(index, shards, [vectors[p] for p in order])
        print("recall@10 by nprobe:", recall)

        origin_runner, origin_url = await _serve(create_origin_app(origin_settings))
        relay_runner, relay_url = await _serve(_relay_app(origin_url, args.backhaul_ms / 1000, args.backhaul_rate))
        rows = []
        try:
            for fraction in (float(f) for f in args.capacities.split(",")):
                row = await _one_capacity(
                    args,
                    root,
                    relay_url,
                    index,
                    fraction,
                    [vectors[int(p)].tolist() for p in picks],
                )
                rows.append(row)
                print(json.dumps(row))
        finally:
            await relay_runner.cleanup()
            await origin_runner.cleanup()
        write_result(
            "rag_edge",
            {
                "setup": __doc__,
                "parameters": {k: getattr(args, k) for k in vars(args)},
                "collection": {
                    "documents": report.documents,
                    "chunks": report.chunks,
                    "shards": report.shards,
                    "bytes": index.total_bytes,
                    "ingest_s": round(ingest_s, 1),
                },
                "recall_at_10_by_nprobe": recall,
                "capacities": rows,
            },
        )


async def _one_capacity(
    args: argparse.Namespace,
    root: Path,
    relay_url: str,
    index: Any,
    fraction: float,
    queries: list[list[float]],
) -> dict[str, Any]:
    capacity = int(fraction * index.total_bytes) + 256 * 1024  # + the index block and the manifest's slack
    settings = EdgeSettings(
        node_id=f"edge-{int(fraction * 100)}",
        data_dir=root / f"edge-{fraction}",
        capacity_bytes=capacity,
        origin_url=relay_url,
        policy="lfu",
        fsync=False,
        port=0,
    )
    app = create_edge_app(settings)
    knowledge = app[edge_knowledge_key]
    knowledge.estimator = FetchEstimator(rate_bytes_per_s=args.backhaul_rate, rtt_s=2 * args.backhaul_ms / 1000)
    runner, url = await _serve(app)
    latencies: dict[str, list[float]] = {"local": [], "fetched": [], "forwarded": []}
    peak = 0
    try:
        async with aiohttp.ClientSession() as s:
            for i, vec in enumerate(queries):
                body = {
                    "embedding": vec,
                    "k": 10,
                    "nprobe": args.nprobe,
                    "deadline_ms": args.deadline_ms,
                }
                t = time.perf_counter()
                async with s.post(f"{url}/v1/knowledge/{COLLECTION}/query", json=body) as resp:
                    answer = await resp.json()
                    assert resp.status == 200, answer
                elapsed = time.perf_counter() - t
                peak = max(peak, app[cache_key].store.used_bytes)
                if i >= args.warmup:
                    latencies[answer["served"]].append(elapsed * 1000)
    finally:
        await runner.cleanup()
    n = sum(len(v) for v in latencies.values())
    return {
        "capacity_fraction": fraction,
        "capacity_bytes": capacity,
        "peak_used_bytes": peak,
        "hit_ratio": round(len(latencies["local"]) / n, 3),
        "served": {k: len(v) for k, v in latencies.items()},
        "latency_ms": {k: _summary(v) for k, v in latencies.items()},
        "all_latency_ms": _summary([x for v in latencies.values() for x in v]),
        "learned_rate_bytes_per_s": round(knowledge.estimator.rate_bytes_per_s),
    }


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "n": len(values),
    }


def _recall(index: Any, shards: dict[int, Any], queries: list[np.ndarray]) -> dict[str, float]:
    everything = {n: s for n, s in shards.items()}
    out = {}
    for nprobe in (1, 2, 3, 4, 8, 16):
        if nprobe > len(shards):
            break
        total = 0.0
        for q in queries:
            exact = {(h.source, h.position) for h in search_shards(everything, q, 10)}
            ivf = {
                (h.source, h.position)
                for h in search_shards({p: shards[p] for p in route_query(index, q, nprobe)}, q, 10)
            }
            total += len(exact & ivf) / len(exact)
        out[str(nprobe)] = round(total / len(queries), 4)
    return out


def _load_collection(settings: OriginSettings) -> tuple[Any, dict[int, Any]]:
    from cachenet.blockstore import BlockStore

    catalogue = Catalogue(settings.database_url)
    store = BlockStore(settings.data_dir / "store", fsync=False)
    try:
        manifest = catalogue.manifest(f"knowledge/{COLLECTION}")
        index = decode_index(store.read(index_ref(manifest).block_id))
        return index, {n: decode_shard(store.read(s.block_id)) for n, s in enumerate(index.shards)}
    finally:
        catalogue.close()


def _relay_app(origin_url: str, delay_s: float, rate: float) -> web.Application:
    """The emulated backhaul: delay each way, responses paced through one shared token bucket."""
    bucket = TokenBucket(rate)
    app = web.Application()
    sessions: list[aiohttp.ClientSession] = []

    async def relay(request: web.Request) -> web.Response:
        if not sessions:
            sessions.append(aiohttp.ClientSession())
        body = await request.read()
        await asyncio.sleep(delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "if-none-match")}
        async with sessions[0].request(request.method, origin_url + request.path_qs, data=body, headers=headers) as up:
            data = await up.read()
            keep = {
                k: v
                for k, v in up.headers.items()
                if k.lower() in ("content-type", "etag", "x-blake3", "x-repo-commit", "cache-control")
            }
            status = up.status
        await bucket.pace(len(data))
        await asyncio.sleep(delay_s)
        return web.Response(body=data, status=status, headers=keep)

    async def close(app: web.Application) -> None:
        for s in sessions:
            await s.close()

    app.router.add_route("*", "/{tail:.*}", relay)
    app.on_cleanup.append(close)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _write_corpus(path: Path, limit: int) -> Path:
    import importlib

    rows = []
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or not (
                    inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)
                ):
                    continue
                doc = inspect.getdoc(obj) or ""
                key = f"{name}.{attr}"
                if len(doc.split()) < 15 or doc in seen:
                    continue
                seen.add(doc)
                rows.append({"id": key, "text": f"{key}: {doc}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:limit]))
    return path


if __name__ == "__main__":
    main()
