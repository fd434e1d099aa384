"""Vector search speed: numpy exact inner product over 10k–100k vectors, all vs IVF shards.

Random unit vectors of 384 dims (the speed of a matrix-vector product does not depend on
the content). For each collection size: queries/s of exact search over every vector
(one query at a time, as the servers run it: `vectors @ q` + argpartition), and of the
IVF path the servers use (`route_query` + `search_shards` over nprobe of ~sqrt(n) shards).
"""

import argparse
import statistics
import time
from typing import Any, Final

import numpy as np

from bench.machine import write_result
from cachenet.knowledge.formats import ChunkInfo, IndexInfo, Shard, ShardInfo
from cachenet.knowledge.search import route_query, search_shards
from registry.knowledge.ingest import assign_shards, default_shard_count, train_centroids

__all__ = ("main",)

DIMS: Final = 384
SIZES: Final = (10_000, 30_000, 100_000)


def main() -> None:
    """Run the measurement and write bench/results/rag_search.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--nprobe", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for n in SIZES:
        vectors = _unit(rng, n, DIMS)
        queries = _unit(rng, args.queries, DIMS)
        k = default_shard_count(n)
        centroids = train_centroids(vectors[: min(n, 20_000)], k, seed=0, iterations=10)
        labels = assign_shards(vectors, centroids)
        shards = {}
        for j in range(k):
            rows_j = np.flatnonzero(labels == j)
            shards[j] = Shard([ChunkInfo("s", int(r), "") for r in rows_j], np.ascontiguousarray(vectors[rows_j]))
        infos = tuple(ShardInfo(f"shards/{j:05d}", "0" * 32, "0" * 64, 1, len(shards[j])) for j in range(k))
        index = IndexInfo("bench", "m", DIMS, centroids, infos, n, 1, 0, args.nprobe)
        exact_s = _time_each(queries, lambda q, v=vectors: np.argpartition(-(v @ q), 10)[:10])
        ivf_s = _time_each(
            queries,
            lambda q, i=index, s=shards: search_shards({p: s[p] for p in route_query(i, q, args.nprobe)}, q, 10),
        )
        row = {
            "vectors": n,
            "dims": DIMS,
            "shards": k,
            "nprobe": args.nprobe,
            "exact_queries_per_s": round(1 / statistics.median(exact_s)),
            "exact_median_ms": round(statistics.median(exact_s) * 1000, 3),
            "ivf_queries_per_s": round(1 / statistics.median(ivf_s)),
            "ivf_median_ms": round(statistics.median(ivf_s) * 1000, 3),
        }
        rows.append(row)
        print(row)
    path = write_result("rag_search", {"note": __doc__, "results": rows})
    print(f"wrote {path}")


def _time_each(queries: np.ndarray, fn: Any) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
    return out


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d), dtype=np.float32)
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


if __name__ == "__main__":
    main()
