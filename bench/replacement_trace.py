"""Trace-driven comparison of replacement policies on Zipf demand over LoRA variants of backbones.

Run: python -m bench.replacement_trace [--requests N] [--seed S] [--out PATH]
"""

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import libcachesim
import numpy as np

from placement.replacement import POLICIES, ReplacementPolicy, make_policy, serve_request

__all__ = ("Catalogue", "ModelInfo", "build_catalogue", "build_trace", "main", "run_libcachesim")
log = logging.getLogger(__name__)

DEFAULT_OUT: Final = Path(__file__).parent / "results" / "replacement_trace.json"
# (name, bytes, blocks): fp16 sizes of real checkpoints, tensor-aligned blocks grouped per layer
BACKBONES: Final = (
    ("llama-3.2-1b", 2_471_645_184, 18),
    ("phi-3-mini-3.8b", 7_642_159_104, 34),
    ("llama-3.1-8b", 16_060_522_496, 66),
)
ADAPTERS_PER_BACKBONE: Final = 40
ADAPTER_MIN_BYTES: Final = 300_000
ADAPTER_MAX_BYTES: Final = 40_000_000
ZIPF_EXPONENT: Final = 0.9
DRIFT_EVERY_REQUESTS: Final = 2_000
SECONDS_PER_REQUEST: Final = 1.0
HALF_LIFE_S: Final = 1_000.0
CAPACITY_FRACTIONS: Final = (0.05, 0.10, 0.20, 0.35, 0.50)
ADAPTER_ONLY_FRACTION: Final = 0.5
LIBCACHESIM_POLICIES: Final = ("LRU", "LFU", "ARC", "S3FIFO")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One requestable model: its blocks in reading order and the backbone part of them."""

    name: str
    blocks: dict[str, int]
    backbone_blocks: frozenset[str]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Models and the deduplicated block sizes they are made of."""

    models: tuple[ModelInfo, ...]
    block_sizes: dict[str, int]
    backbone_blocks: frozenset[str]
    users: dict[str, tuple[str, ...]]

    @property
    def dedup_bytes(self) -> int:
        """Bytes of every distinct block."""
        return sum(self.block_sizes.values())

    @property
    def naive_bytes(self) -> int:
        """Bytes of every model stored on its own."""
        return sum(sum(m.blocks.values()) for m in self.models)


class ManualClock:
    """A clock the trace advances by SECONDS_PER_REQUEST per request."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def build_catalogue(*, seed: int) -> Catalogue:
    """Each backbone is a model and the base of ADAPTERS_PER_BACKBONE LoRA variants."""
    rng = np.random.default_rng(seed)
    models: list[ModelInfo] = []
    sizes: dict[str, int] = {}
    for name, total, n_blocks in BACKBONES:
        shares = rng.dirichlet(np.full(n_blocks, 8.0))
        base = {_block_id(f"{name}/{i}"): int(s) for i, s in enumerate(shares * total)}
        sizes.update(base)
        models.append(ModelInfo(name, dict(base), frozenset(base)))
        for a in range(ADAPTERS_PER_BACKBONE):
            adapter_bytes = float(np.exp(rng.uniform(np.log(ADAPTER_MIN_BYTES), np.log(ADAPTER_MAX_BYTES))))
            n_parts = int(rng.integers(1, 4))
            part = {_block_id(f"{name}-lora-{a}/{i}"): int(adapter_bytes / n_parts) for i in range(n_parts)}
            sizes.update(part)
            models.append(ModelInfo(f"{name}-lora-{a}", {**base, **part}, frozenset(base)))
    backbone = frozenset(b for m in models for b in m.backbone_blocks)
    users: dict[str, list[str]] = {}
    for m in models:
        for b in m.blocks:
            users.setdefault(b, []).append(m.name)
    return Catalogue(tuple(models), sizes, backbone, {b: tuple(u) for b, u in users.items()})


def build_trace(catalogue: Catalogue, *, requests: int, seed: int, drift: bool = True) -> list[tuple[int, bool]]:
    """Zipf requests whose popularity ranking is reshuffled every DRIFT_EVERY_REQUESTS (or never).

    Each entry is (model index, adapter_only): adapter_only marks a device that already holds
    the backbone and fetches only the adapter's blocks (the "adapter-only" scenario).
    """
    rng = np.random.default_rng(seed + 1)
    n = len(catalogue.models)
    weights = 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT
    probs = weights / weights.sum()
    trace: list[tuple[int, bool]] = []
    ranking = np.arange(n)
    while len(trace) < requests:
        if drift or not trace:
            ranking = rng.permutation(n)
        count = min(DRIFT_EVERY_REQUESTS, requests - len(trace))
        ranks = rng.choice(n, size=count, p=probs)
        partial = rng.random(count) < ADAPTER_ONLY_FRACTION
        trace.extend((int(ranking[r]), bool(p)) for r, p in zip(ranks, partial, strict=True))
    return trace


def request_blocks(model: ModelInfo, adapter_only: bool) -> dict[str, int]:
    """The blocks a request reads: all, or the adapter's alone when the device has the base."""
    if adapter_only and len(model.blocks) > len(model.backbone_blocks):
        return {b: s for b, s in model.blocks.items() if b not in model.backbone_blocks}
    return model.blocks


def run_policy(
    name: str,
    catalogue: Catalogue,
    trace: Sequence[tuple[int, bool]],
    *,
    capacity_bytes: int,
    granularity: Literal["block", "model"],
    adapter_only: bool,
    manifest_users: bool = False,
) -> dict[str, Any]:
    """Replay the trace through one of our policies and count hits.

    With `manifest_users` a stored block is declared used by every model whose manifest names
    it; otherwise the policy learns users from the requests that read the block.
    """
    clock = ManualClock()
    half_life_s = HALF_LIFE_S if name in ("sharing-lfu", "bundle") else None
    policy: ReplacementPolicy = make_policy(name, capacity_bytes=capacity_bytes, clock=clock, half_life_s=half_life_s)
    model_hits = obj_hits = obj_reqs = hit_bytes = req_bytes = backbone_evicted_bytes = 0
    started = time.perf_counter()
    for i, (index, partial) in enumerate(trace):
        clock.now = i * SECONDS_PER_REQUEST
        model = catalogue.models[index]
        blocks = request_blocks(model, adapter_only and partial)
        info = serve_request(
            policy,
            model.name,
            blocks,
            granularity=granularity,
            users=catalogue.users if manifest_users else None,
        )
        model_hits += info.model_hit
        obj_hits += info.hits
        obj_reqs += info.hits + info.misses
        hit_bytes += info.hit_bytes
        req_bytes += info.hit_bytes + info.miss_bytes
        if granularity == "block":
            backbone_evicted_bytes += sum(
                catalogue.block_sizes[b] for b in info.evicted if b in catalogue.backbone_blocks
            )
    return _counts(
        len(trace),
        model_hits,
        obj_hits,
        obj_reqs,
        hit_bytes,
        req_bytes,
        started,
        backbone_bytes_evicted=backbone_evicted_bytes if granularity == "block" else None,
    )


def run_libcachesim(
    name: str,
    catalogue: Catalogue,
    trace: Sequence[tuple[int, bool]],
    *,
    capacity_bytes: int,
    adapter_only: bool,
) -> dict[str, Any]:
    """Replay the same block-level request sequence through a libCacheSim policy."""
    cache = getattr(libcachesim, name)(capacity_bytes, hashpower=16)
    ids = {b: i + 1 for i, b in enumerate(catalogue.block_sizes)}
    model_hits = obj_hits = obj_reqs = hit_bytes = req_bytes = 0
    started = time.perf_counter()
    for i, (index, partial) in enumerate(trace):
        model = catalogue.models[index]
        all_hit = True
        for block_id, size in request_blocks(model, adapter_only and partial).items():
            hit = cache.get(libcachesim.Request(obj_size=size, obj_id=ids[block_id], clock_time=i))
            obj_reqs += 1
            req_bytes += size
            if hit:
                obj_hits += 1
                hit_bytes += size
            else:
                all_hit = False
        model_hits += all_hit
    return _counts(len(trace), model_hits, obj_hits, obj_reqs, hit_bytes, req_bytes, started)


def _counts(
    requests: int,
    model_hits: int,
    obj_hits: int,
    obj_reqs: int,
    hit_bytes: int,
    req_bytes: int,
    started: float,
    **extra: Any,
) -> dict[str, Any]:
    """One replay's hit and miss counts, ratios and duration."""
    return {
        "model_hit_ratio": model_hits / requests,
        "byte_hit_ratio": hit_bytes / req_bytes,
        "object_hits": obj_hits,
        "object_requests": obj_reqs,
        "byte_hits": hit_bytes,
        "bytes_requested": req_bytes,
        "object_misses": obj_reqs - obj_hits,
        "byte_misses": req_bytes - hit_bytes,
        **extra,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run every policy over every capacity in both scenarios and write the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.replacement_trace")
    parser.add_argument("--requests", type=int, default=8_000)
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    catalogue = build_catalogue(seed=args.seed)
    trace = build_trace(catalogue, requests=args.requests, seed=args.seed)
    log.info(
        "catalogue: %d models, %d blocks, %.2f GB deduplicated, %.2f GB stored per model",
        len(catalogue.models),
        len(catalogue.block_sizes),
        catalogue.dedup_bytes / 1e9,
        catalogue.naive_bytes / 1e9,
    )
    started = time.perf_counter()
    scenarios: dict[str, Any] = {}
    for scenario, adapter_only in (("full-model-requests", False), ("adapter-only-mix", True)):
        rows: list[dict[str, Any]] = []
        for fraction in CAPACITY_FRACTIONS:
            capacity = int(fraction * catalogue.dedup_bytes)
            runs: list[tuple[str, Literal["block", "model"], bool]] = [(name, "block", False) for name in POLICIES]
            runs += [("sharing-lru", "block", True), ("sharing-lfu", "block", True)]
            if not adapter_only:
                runs += [(name, "model", False) for name in POLICIES]
            for name, granularity, manifest_users in runs:
                result = run_policy(
                    name,
                    catalogue,
                    trace,
                    capacity_bytes=capacity,
                    granularity=granularity,
                    adapter_only=adapter_only,
                    manifest_users=manifest_users,
                )
                label = f"{name}+manifest-users" if manifest_users else name
                rows.append(_row("cachenet", label, granularity, fraction, capacity, result))
            for name in LIBCACHESIM_POLICIES:
                result = run_libcachesim(name, catalogue, trace, capacity_bytes=capacity, adapter_only=adapter_only)
                rows.append(_row("libcachesim", name, "block", fraction, capacity, result))
            _log_rows(scenario, fraction, rows)
        scenarios[scenario] = {
            "adapter_only_fraction": ADAPTER_ONLY_FRACTION if adapter_only else 0.0,
            "rows": rows,
            "cross_check": _cross_check(rows),
        }
    report = {
        "benchmark": "replacement_trace",
        "command": " ".join(["python", "-m", "bench.replacement_trace", *(argv or sys.argv[1:])]),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "parameters": {
            "seed": args.seed,
            "requests": args.requests,
            "backbones": [{"name": n, "bytes": b, "blocks": k} for n, b, k in BACKBONES],
            "adapters_per_backbone": ADAPTERS_PER_BACKBONE,
            "adapter_bytes_range": [ADAPTER_MIN_BYTES, ADAPTER_MAX_BYTES],
            "adapter_size_distribution": "log-uniform, split into 1-3 equal blocks",
            "models": len(catalogue.models),
            "blocks": len(catalogue.block_sizes),
            "dedup_catalogue_bytes": catalogue.dedup_bytes,
            "per_model_catalogue_bytes": catalogue.naive_bytes,
            "zipf_exponent": ZIPF_EXPONENT,
            "drift_every_requests": DRIFT_EVERY_REQUESTS,
            "seconds_per_request": SECONDS_PER_REQUEST,
            "sharing_lfu_half_life_s": HALF_LIFE_S,
            "capacity_fractions_of_dedup": list(CAPACITY_FRACTIONS),
            "libcachesim_version": libcachesim.__version__,
        },
        "definitions": {
            "model_hit": "every block (or the whole-model object) the request read was cached",
            "byte_hit_ratio": "bytes served from cache / bytes requested",
            "granularity=model": "a model is one object of its blocks' summed size (no sharing)",
            "+manifest-users": "blocks are declared used by every model whose manifest names "
            "them (the edge node knows manifests); without it users are learnt from requests",
            "adapter-only-mix": "that fraction of requests come from devices holding the backbone "
            "and read only the adapter blocks; the node still records the model request",
        },
        "scenarios": scenarios,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s in %.1f s", args.out, report["total_seconds"])


def _block_id(label: str) -> str:
    return hashlib.blake2b(label.encode(), digest_size=16).hexdigest()


def _row(
    source: str, name: str, granularity: str, fraction: float, capacity: int, result: dict[str, Any]
) -> dict[str, Any]:
    return {
        "source": source,
        "policy": name,
        "granularity": granularity,
        "capacity_fraction": fraction,
        "capacity_bytes": capacity,
        **result,
    }


def _cross_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our per-block LRU/LFU against libCacheSim's on the same block sequence."""
    checks = []
    for ours, theirs in (("lru", "LRU"), ("lfu", "LFU")):
        for fraction in CAPACITY_FRACTIONS:
            a = next(
                r
                for r in rows
                if r["source"] == "cachenet"
                and r["policy"] == ours
                and r["granularity"] == "block"
                and r["capacity_fraction"] == fraction
            )
            b = next(
                r
                for r in rows
                if r["source"] == "libcachesim" and r["policy"] == theirs and r["capacity_fraction"] == fraction
            )
            checks.append(
                {
                    "policy": ours,
                    "capacity_fraction": fraction,
                    "object_misses": [a["object_misses"], b["object_misses"]],
                    "byte_misses": [a["byte_misses"], b["byte_misses"]],
                    "identical": a["object_misses"] == b["object_misses"] and a["byte_misses"] == b["byte_misses"],
                }
            )
    return checks


def _log_rows(scenario: str, fraction: float, rows: list[dict[str, Any]]) -> None:
    log.info("[%s] capacity %.0f%% of deduplicated catalogue", scenario, 100 * fraction)
    for r in rows:
        if r["capacity_fraction"] == fraction:
            log.info(
                "  %-11s %-27s %-5s model hit %.3f  byte hit %.3f  (%.1f s)",
                r["source"],
                r["policy"],
                r["granularity"],
                r["model_hit_ratio"],
                r["byte_hit_ratio"],
                r["seconds"],
            )


def _machine() -> dict[str, Any]:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
    }


if __name__ == "__main__":
    main()
