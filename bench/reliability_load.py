"""Load: many concurrent device connections against one edge node, misses going to an origin.

One `edge serve` and one `origin serve` subprocess on loopback; one client process (aiohttp on
uvloop, a connector limited to `connections`) runs `connections` device loops until the time
is up (and at most `max_requests`). The mix: 60 % blocks the node holds, 25 % whole files
it holds, and misses spread evenly over the run (10 % single blocks never requested before,
5 % files of a model whose blocks the node has never seen, so the node fetches them from the
origin). Every body is checked (blocks against their XXH3-128 id, files against the XXH3-128
of the file published). The edge's resident memory (VmRSS from /proc/PID/status) is sampled
four times a second: the peak, and the value at 25 % and at 100 % of the run (no growth with
the request count).

    python -m bench.reliability_load [--connections 500] [--duration 60] [--seed 1]
"""

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import uvloop
import xxhash

from bench.machine import write_result
from bench.reliability_crash import TOKEN, Server, http, write_random_model
from cachenet.manifest import ModelManifest
from registry.chunking import list_folder_files
from registry.publish import HttpTarget, publish_path

__all__ = ("LoadResult", "main", "run_load")

MAX_REQUESTS: Final = 2_000_000
REQUEST_TIMEOUT_S: Final = 60.0
RSS_SAMPLE_S: Final = 0.25
HOT_FILES: Final = 6
MIX: Final = (("hot_block", 0.60), ("hot_file", 0.25), ("cold_block", 0.10), ("cold_file", 0.05))


@dataclass
class LoadResult:
    """What the run measured."""

    connections: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list, repr=False)
    rss_samples: list[tuple[float, int, int]] = field(default_factory=list, repr=False)
    error_examples: list[str] = field(default_factory=list)
    edge_block_requests: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Figures for the JSON result (latencies in ms, memory in MiB)."""
        lat = sorted(self.latencies_s)
        rss = self.rss_samples

        def at(fraction: float) -> tuple[int, int]:
            t = fraction * self.duration_s
            sample = min(rss, key=lambda s: abs(s[0] - t)) if rss else (0.0, 0, 0)
            return sample[1], sample[2]

        req25, rss25 = at(0.25)
        req100, rss100 = at(1.0)
        return {
            "connections": self.connections,
            "duration_s": round(self.duration_s, 2),
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": round(self.requests / self.duration_s, 1) if self.duration_s else 0.0,
            "by_kind": self.by_kind,
            "edge_block_requests": self.edge_block_requests,
            "p50_ms": round(_quantile(lat, 0.50) * 1e3, 2),
            "p99_ms": round(_quantile(lat, 0.99) * 1e3, 2),
            "max_ms": round(lat[-1] * 1e3, 2) if lat else 0.0,
            "mean_ms": round(statistics.fmean(lat) * 1e3, 2) if lat else 0.0,
            "peak_rss_mib": round(max((s[2] for s in rss), default=0) / 1024, 1),
            "rss_at_25pct_mib": round(rss25 / 1024, 1),
            "rss_at_100pct_mib": round(rss100 / 1024, 1),
            "rss_growth_25_to_100pct_mib": round((rss100 - rss25) / 1024, 1),
            "requests_at_25pct": req25,
            "requests_at_100pct": req100,
            "rss_samples": len(rss),
            "error_examples": self.error_examples[:10],
        }


@dataclass
class _Workload:
    edge_url: str
    hot_blocks: list[str]
    hot_files: list[tuple[str, str]]  # (url path, xxh3 of the file)
    cold_blocks: list[str]
    cold_files: list[tuple[str, str]]
    cold_block_next: int = 0
    cold_file_next: int = 0


def run_load(
    work: Path,
    *,
    connections: int,
    duration_s: float,
    seed: int,
    cold_files: int = 100,
    cold_blocks: int = 1500,
) -> LoadResult:
    """Start an origin and an edge node, publish the models, run the load, stop everything."""
    origin = Server.origin(work)
    edge = Server.edge(work, node_id="load-edge", capacity="4GiB", origin_url=origin.url)
    try:
        origin.start()
        workload = _publish_models(
            work, origin.url, edge.url, seed=seed, cold_files=cold_files, cold_blocks=cold_blocks
        )
        edge.start()
        for path, _ in workload.hot_files:  # warm: the node holds every hot block
            status, _body = http("GET", edge.url + path)
            if status != 200:
                raise RuntimeError(f"warm-up GET {path} answered {status}")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_drive(workload, edge.pid, connections=connections, duration_s=duration_s, seed=seed))
        result.edge_block_requests = _edge_block_requests(edge.url)
        return result
    finally:
        edge.stop()
        origin.stop()


def _publish_models(
    work: Path, origin_url: str, edge_url: str, *, seed: int, cold_files: int, cold_blocks: int
) -> _Workload:
    hot = write_random_model(
        work / "models" / "hot", seed=seed, tensors=16 * HOT_FILES, files=HOT_FILES, max_elems=4096
    )
    cold = work / "models" / "cold-files"
    for k in range(cold_files):
        write_random_model(cold / f"part-{k:04d}", seed=seed * 1000 + k + 1, tensors=6, max_elems=2048)
    pool = write_random_model(work / "models" / "cold-blocks", seed=seed + 7, tensors=cold_blocks, max_elems=1024)
    names = {"load/hot": hot, "load/cold-files": cold, "load/cold-blocks": pool}

    async def publish() -> dict[str, ModelManifest]:
        target = HttpTarget(origin_url, TOKEN)
        try:
            for name, folder in names.items():
                await publish_path(folder, name=name, target=target, progress=False)
        finally:
            await target.close()
        out = {}
        for name in names:
            status, body = await asyncio.to_thread(http, "GET", f"{origin_url}/v1/models/{name}/revisions/main")
            assert status == 200, (name, status)
            out[name] = ModelManifest.from_bytes(body)
        return out

    manifests = asyncio.run(publish())

    def files_of(name: str, folder: Path, *, suffix: str = ".safetensors") -> list[tuple[str, str]]:
        return [
            (f"/{name}/resolve/main/{rel}", xxhash.xxh3_128_hexdigest(src.read_bytes()))
            for src, rel in list_folder_files(folder)
            if rel.endswith(suffix)
        ]

    hot_blocks = sorted(manifests["load/hot"].unique_blocks())
    # The pool's blocks and the cold files' blocks are new to the node; shared tensors are not.
    known = set(hot_blocks)
    pool_blocks = [b for b in manifests["load/cold-blocks"].unique_blocks() if b not in known]
    rng = random.Random(seed)
    rng.shuffle(pool_blocks)
    cold_list = files_of("load/cold-files", cold)
    rng.shuffle(cold_list)
    return _Workload(edge_url, hot_blocks, files_of("load/hot", hot), pool_blocks, cold_list)


async def _drive(w: _Workload, edge_pid: int, *, connections: int, duration_s: float, seed: int) -> LoadResult:
    result = LoadResult(connections=connections, duration_s=duration_s)
    result.by_kind = {kind: 0 for kind, _ in MIX}
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.monotonic()
    deadline = start + duration_s
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]

    def pick(rng: random.Random) -> tuple[str, str, str, str]:
        """(kind, url path, expected xxh3, 'block' or 'file'), misses paced evenly over the run."""
        kind = rng.choices(kinds, weights)[0]
        due = (time.monotonic() - start) / duration_s
        if kind == "cold_block" and w.cold_block_next < min(len(w.cold_blocks), int(due * len(w.cold_blocks)) + 1):
            block_id = w.cold_blocks[w.cold_block_next]
            w.cold_block_next += 1
            return kind, f"/v1/blocks/{block_id}", block_id, "block"
        if kind == "cold_file" and w.cold_file_next < min(len(w.cold_files), int(due * len(w.cold_files)) + 1):
            path, digest = w.cold_files[w.cold_file_next]
            w.cold_file_next += 1
            return kind, path, digest, "file"
        if kind in ("hot_file", "cold_file"):
            path, digest = rng.choice(w.hot_files)
            return "hot_file", path, digest, "file"
        block_id = rng.choice(w.hot_blocks)
        return "hot_block", f"/v1/blocks/{block_id}", block_id, "block"

    async def device(k: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(seed * 100_003 + k)
        await asyncio.sleep(k * 0.5 / connections)  # open the connections over half a second
        while time.monotonic() < deadline and result.requests + result.errors < MAX_REQUESTS:
            kind, path, expected, _what = pick(rng)
            t0 = time.perf_counter()
            try:
                async with session.get(w.edge_url + path) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                result.errors += 1
                result.error_examples.append(f"{path}: {e!r}")
                continue
            result.latencies_s.append(time.perf_counter() - t0)
            if status != 200 or xxhash.xxh3_128_hexdigest(body) != expected:
                result.errors += 1
                result.error_examples.append(f"{path}: {status}, {len(body)} bytes")
                continue
            result.requests += 1
            result.by_kind[kind] += 1

    async def sample_rss() -> None:
        status_file = Path(f"/proc/{edge_pid}/status")
        while time.monotonic() < deadline + 1:
            rss = _vm_rss_kib(status_file)
            result.rss_samples.append((time.monotonic() - start, result.requests, rss))
            await asyncio.sleep(RSS_SAMPLE_S)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(device(k, session) for k in range(connections)))
        result.duration_s = time.monotonic() - start
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    result.rss_samples = [s for s in result.rss_samples if s[0] <= result.duration_s + 0.5]
    return result


def _vm_rss_kib(status_file: Path) -> int:
    for line in status_file.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _edge_block_requests(edge_url: str) -> dict[str, float]:
    status, body = http("GET", edge_url + "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if line.startswith("cachenet_edge_block_requests_total{"):
            label = line.split('result="', 1)[1].split('"', 1)[0]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    """Run the load and write bench/results/reliability_load.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cachenet-load-"))
    try:
        result = run_load(
            work,
            connections=args.connections,
            duration_s=args.duration,
            seed=args.seed,
            cold_files=200,
            cold_blocks=3000,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = result.summary()
    print(
        json.dumps({k: v for k, v in summary.items() if k != "error_examples"}, indent=2),
        file=sys.stderr,
    )
    path = write_result(
        "reliability_load",
        {
            **summary,
            "mix": dict(MIX),
            "notes": "one client process (aiohttp on uvloop, connector limit = connections) "
            "on the same "
            "2-vCPU machine as the edge node and the origin; misses are paced evenly over the run; "
            "RSS is the edge process's VmRSS, sampled every 0.25 s.",
        },
    )
    print(path)


if __name__ == "__main__":
    main()
