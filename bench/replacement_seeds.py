"""Bundle-aware replacement against libCacheSim's LRU, LFU, ARC, S3-FIFO and offline Belady.

Same catalogue and traces as `bench.replacement_trace` (123 models over 3 backbones, Zipf),
over several seeds, with and without popularity drift, for full-model requests and the
adapter-only mix. Per capacity and seed it checks the issue-20 target: the bundle policy's
model hit ratio >= the best of LRU/LFU/ARC/S3-FIFO and its byte hit ratio >= their best - 0.01.
Writes bench/results/replacement_seeds.json and .png (hit ratio vs capacity per policy).

Run: python -m bench.replacement_seeds [--requests N] [--seeds 1 2 3]
"""

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import libcachesim

from bench.machine import RESULTS_DIR, write_result
from bench.replacement_trace import (
    CAPACITY_FRACTIONS,
    LIBCACHESIM_POLICIES,
    Catalogue,
    build_catalogue,
    build_trace,
    request_blocks,
    run_libcachesim,
    run_policy,
)
from placement.replacement.bundle import DEFAULT_BYTE_WEIGHT

__all__ = ("main", "run_belady")
log = logging.getLogger(__name__)

OURS: Final = ("bundle",)
BYTE_SLACK: Final = 0.01


def run_belady(
    catalogue: Catalogue, trace: Sequence[tuple[int, bool]], *, capacity_bytes: int, adapter_only: bool
) -> dict[str, float]:
    """libCacheSim's offline Belady on the block sequence (next use known in advance)."""
    ids = {b: i + 1 for i, b in enumerate(catalogue.block_sizes)}
    seq: list[tuple[int, int, int]] = []  # (request index, object id, size)
    for i, (index, partial) in enumerate(trace):
        for block_id, size in request_blocks(catalogue.models[index], adapter_only and partial).items():
            seq.append((i, ids[block_id], size))
    nxt = [2**62] * len(seq)
    last: dict[int, int] = {}
    for pos in range(len(seq) - 1, -1, -1):
        obj = seq[pos][1]
        nxt[pos] = last.get(obj, 2**62)
        last[obj] = pos
    cache = libcachesim.Belady(capacity_bytes, hashpower=16)
    hit_bytes = req_bytes = 0
    model_miss: set[int] = set()
    for pos, (i, obj, size) in enumerate(seq):
        req = libcachesim.Request(obj_size=size, obj_id=obj, clock_time=pos)
        req.next_access_vtime = nxt[pos]
        req_bytes += size
        if cache.get(req):
            hit_bytes += size
        else:
            model_miss.add(i)
    return {"model_hit_ratio": 1 - len(model_miss) / len(trace), "byte_hit_ratio": hit_bytes / max(req_bytes, 1)}


def main(argv: Sequence[str] | None = None) -> None:
    """Every policy x capacity x seed x drift x scenario; JSON and PNG."""
    parser = argparse.ArgumentParser(prog="python -m bench.replacement_seeds")
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shard", action="store_true", help="write replacement_seeds.<seeds>.json only")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine shard files into the result")
    args = parser.parse_args(argv)
    if args.merge:
        _merge(args.merge)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        catalogue = build_catalogue(seed=seed)
        for drift in (True, False):
            trace = build_trace(catalogue, requests=args.requests, seed=seed, drift=drift)
            for scenario, adapter_only in (("full-model-requests", False), ("adapter-only-mix", True)):
                for fraction in CAPACITY_FRACTIONS:
                    capacity = int(fraction * catalogue.dedup_bytes)
                    key = {"seed": seed, "drift": drift, "scenario": scenario, "capacity_fraction": fraction}
                    results: dict[str, dict[str, float]] = {}
                    for name in OURS:
                        r = run_policy(
                            name, catalogue, trace, capacity_bytes=capacity, granularity="block",
                            adapter_only=adapter_only,
                        )  # fmt: skip
                        results[name] = _ratios(r)
                    for name in LIBCACHESIM_POLICIES:
                        r = run_libcachesim(name, catalogue, trace, capacity_bytes=capacity, adapter_only=adapter_only)
                        results[name] = _ratios(r)
                    results["Belady"] = run_belady(catalogue, trace, capacity_bytes=capacity, adapter_only=adapter_only)
                    best_model = max(results[n]["model_hit_ratio"] for n in LIBCACHESIM_POLICIES)
                    best_byte = max(results[n]["byte_hit_ratio"] for n in LIBCACHESIM_POLICIES)
                    ours = results["bundle"]
                    row = {
                        **key,
                        "policies": results,
                        "best_baseline_model_hit_ratio": best_model,
                        "best_baseline_byte_hit_ratio": best_byte,
                        "model_target_met": ours["model_hit_ratio"] >= best_model,
                        "byte_target_met": ours["byte_hit_ratio"] >= best_byte - BYTE_SLACK,
                    }
                    rows.append(row)
                    log.info(
                        "seed %d drift %-5s %-20s %.2f: bundle %.3f/%.3f best %.3f/%.3f %s%s",
                        seed, drift, scenario, fraction, ours["model_hit_ratio"], ours["byte_hit_ratio"],
                        best_model, best_byte, "M" if row["model_target_met"] else "m",
                        "B" if row["byte_target_met"] else "b",
                    )  # fmt: skip
    doc = {
        "parameters": {
            "requests": args.requests,
            "seeds": args.seeds,
            "capacity_fractions_of_dedup": list(CAPACITY_FRACTIONS),
            "bundle_byte_weight": DEFAULT_BYTE_WEIGHT,
            "byte_slack": BYTE_SLACK,
            "libcachesim_version": libcachesim.__version__,
        },
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.shard:
        name = "replacement_seeds." + "-".join(map(str, args.seeds))
        write_result(name, doc)
        return
    _finish(doc)


def _merge(paths: list[Path]) -> None:
    docs = [json.loads(p.read_text()) for p in paths]
    doc = docs[0]
    doc["parameters"]["seeds"] = sorted(s for d in docs for s in d["parameters"]["seeds"])
    doc["rows"] = [r for d in docs for r in d["rows"]]
    doc["load_average"] = [d["load_average"] for d in docs]
    doc["total_seconds"] = max(d["total_seconds"] for d in docs)
    doc["shards"] = [str(p) for p in paths]
    for key in ("benchmark", "command", "machine", "when"):
        doc.pop(key, None)
    _finish(doc)


def _finish(doc: dict[str, Any]) -> None:
    rows = doc["rows"]
    summary = {
        "rows": len(rows),
        "model_target_met": sum(r["model_target_met"] for r in rows),
        "byte_target_met": sum(r["byte_target_met"] for r in rows),
        "byte_target_missed": [
            {k: r[k] for k in ("seed", "drift", "scenario", "capacity_fraction")}
            | {"bundle": r["policies"]["bundle"]["byte_hit_ratio"], "best": r["best_baseline_byte_hit_ratio"]}
            for r in rows
            if not r["byte_target_met"]
        ],
    }
    write_result("replacement_seeds", {**doc, "summary": summary})
    _plot(rows, RESULTS_DIR / "replacement_seeds.png")


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    return {"model_hit_ratio": r["model_hit_ratio"], "byte_hit_ratio": r["byte_hit_ratio"]}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean over seeds of model and byte hit ratio vs capacity, per policy, per scenario and drift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, d) for s in ("full-model-requests", "adapter-only-mix") for d in (True, False)]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    policies = list(rows[0]["policies"]) if rows else []
    for col, (scenario, drift) in enumerate(panels):
        sel = [r for r in rows if r["scenario"] == scenario and r["drift"] == drift]
        fractions = sorted({r["capacity_fraction"] for r in sel})
        for row_i, metric in enumerate(("model_hit_ratio", "byte_hit_ratio")):
            ax = axes[row_i][col]
            for k, name in enumerate(policies):
                ys = []
                for f in fractions:
                    vals = [r["policies"][name][metric] for r in sel if r["capacity_fraction"] == f]
                    ys.append(sum(vals) / len(vals))
                style = "-" if name != "Belady" else ":"
                ax.plot([100 * f for f in fractions], ys, style, marker="o", ms=3, label=name, color=f"C{k}")
            ax.set_title(f"{scenario}, {'drift' if drift else 'no drift'}", fontsize=9)
            ax.set_xlabel("capacity (% of deduplicated catalogue)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
    if policies:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
