"""Device pulls of a 1 GiB model: cold vs curl from nginx, warm LoRA switch, multi-source.

Everything runs in one run on loopback, each server its own process: an origin, edge
nodes that already hold the model's blocks (so the client path is measured, not the
edge's misses), and nginx (sendfile) serving the original file. The client is the real
CLI (`python -m cachenet pull --json`), timed end to end (process start included) and
by its own report (`elapsed_s`, from manifest to renamed files). Rounds are interleaved.

1. cold: empty local store, one edge node → files written, verified (BLAKE3 per block,
   SHA-256 per file), fsynced; versus `curl -o` of the same file from nginx.
2. warm switch: the base is in the local store; pulling a second LoRA variant fetches only
   its adapter (bytes and time as fractions of the cold pull; with and without writing
   the 1 GiB of base files again).
3. multi-source: three edge nodes each capped by `--egress-rate` versus one such node.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
from safetensors.numpy import save_file

from bench.machine import write_result
from bench.processes import (
    free_port,
    run_cachenet,
    start_cachenet,
    start_nginx,
    stop_processes,
    wait_ready,
)
from bench.publish_throughput import make_model

__all__ = ("main",)

MIB: Final = 1024 * 1024


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the child and its children) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _new_bytes(folder: Path, base: Path) -> int:
    """Bytes of the files in `folder` that are not hard links of files in `base` (written anew)."""
    known = {p.stat().st_ino for p in base.rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.stat().st_ino not in known)


TOKEN: Final = "bench-token"


def main() -> None:
    """Run the benchmark and write bench/results/pull_throughput.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024 MiB)")
    parser.add_argument("--tensors", type=int, default=300, help="tensors (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--egress-rate", default="150MB", help="per-node cap for multi-source (default 150MB/s)")
    args = parser.parse_args()
    if shutil.which("nginx") is None or shutil.which("curl") is None:
        sys.exit("nginx and curl are needed: apt-get install -y nginx curl")
    with tempfile.TemporaryDirectory(prefix="cachenet-pullbench-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            result = _run(tmp, args, procs)
        finally:
            stop_processes(procs)
    path = write_result("pull_throughput", result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {path}")


def _run(tmp: Path, args: argparse.Namespace, procs: dict[str, "subprocess.Popen[bytes]"]) -> dict[str, Any]:
    model_dir = tmp / "model"
    model_dir.mkdir()
    model = make_model(model_dir / "model.safetensors", total_bytes=args.size_mib * MIB, tensors=args.tensors)
    (model_dir / "config.json").write_text('{"model_type": "bench"}')
    size = model.stat().st_size
    adapters = [_make_adapter(tmp / f"lora{i}", seed=i) for i in (1, 2)]

    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    procs["origin"] = start_cachenet(
        tmp,
        "origin",
        [
            "origin",
            "serve",
            "--data",
            str(tmp / "origin"),
            "--port",
            str(origin_port),
            "--token",
            TOKEN,
        ],
    )
    wait_ready(origin)
    run_cachenet(
        [
            "publish",
            str(model_dir),
            "--name",
            "bench/model",
            "--origin",
            origin,
            "--token",
            TOKEN,
            "--no-progress",
        ]
    )
    for i, adapter in enumerate(adapters, 1):
        run_cachenet(
            [
                "publish",
                str(adapter),
                "--name",
                f"bench/lora-{i}",
                "--base",
                "bench/model",
                "--origin",
                origin,
                "--token",
                TOKEN,
                "--no-progress",
            ]
        )

    # One warm edge node: pull everything through it once, then copy its data for the others.
    edge_data = tmp / "edge-1"
    edge_port = free_port()
    procs["edge-warmup"] = start_cachenet(tmp, "edge-warmup", _edge_args(edge_data, origin, edge_port, None))
    wait_ready(f"http://127.0.0.1:{edge_port}")
    for name in ("bench/lora-1", "bench/lora-2"):
        _pull(name, [f"http://127.0.0.1:{edge_port}"], tmp / "warmup-store", None, blocks_only=True)
    stop_processes({"edge-warmup": procs.pop("edge-warmup")})
    shutil.rmtree(tmp / "warmup-store")
    for i in (2, 3):
        shutil.copytree(edge_data, tmp / f"edge-{i}", ignore=shutil.ignore_patterns(".lock"))

    nginx_port = free_port()
    files = tmp / "nginx-files"
    files.mkdir()
    (files / "model.safetensors").hardlink_to(model)
    for path in (files, model):  # nginx workers may run as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    procs["nginx"] = start_nginx(tmp, nginx_port, location="/files/", folder=files)
    wait_ready(f"http://127.0.0.1:{nginx_port}/files/model.safetensors")

    fast_port = free_port()
    procs["edge-fast"] = start_cachenet(tmp, "edge-fast", _edge_args(edge_data, origin, fast_port, None))
    fast = f"http://127.0.0.1:{fast_port}"
    wait_ready(fast)

    rounds: list[dict[str, Any]] = []
    nginx_url = f"http://127.0.0.1:{nginx_port}/files/model.safetensors"
    curl_out = str(tmp / "out-curl.safetensors")
    for r in range(args.rounds):
        one: dict[str, Any] = {}
        order = ["curl", "pull"] if r % 2 == 0 else ["pull", "curl"]
        for what in order:
            _drop_outputs(tmp)
            if what == "curl":
                one["curl_s"], one["curl_cpu_s"] = _timed(["curl", "-sf", "-o", curl_out, nginx_url])
                _drop_outputs(tmp)
                one["curl_sync_s"], one["curl_sync_cpu_s"] = _timed(
                    ["sh", "-c", f"curl -sf -o {curl_out} {nginx_url} && sync"]
                )
            else:
                cold = _pull("bench/model", [fast], tmp / "store", tmp / "out")
                _check_identical(tmp / "out" / "model.safetensors", model)
                one["pull_cli_s"], one["pull_report_s"] = cold["wall_s"], cold["elapsed_s"]
                one["pull_cpu_s"] = cold["cpu_s"]
                one["cold_fetched_bytes"] = cold["fetched_bytes"]
                nofsync = _pull(
                    "bench/model",
                    [fast],
                    tmp / "store-nofsync",
                    tmp / "out-nofsync",
                    extra=["--no-fsync"],
                )
                one["pull_nofsync_cli_s"], one["pull_nofsync_report_s"] = (
                    nofsync["wall_s"],
                    nofsync["elapsed_s"],
                )
                one["pull_nofsync_cpu_s"] = nofsync["cpu_s"]
                # LoRA switch: the base was pulled into ./out; lora-2 is written beside it.
                switch = _pull("bench/lora-2", [fast], tmp / "store", tmp / "out-lora2")
                _check_identical(tmp / "out-lora2" / "model.safetensors", model)
                one["switch_fetched_bytes"] = switch["fetched_bytes"]
                one["switch_reused_bytes"] = switch["reused_bytes"]
                one["switch_cli_s"], one["switch_report_s"] = switch["wall_s"], switch["elapsed_s"]
                one["switch_written_bytes"] = _new_bytes(tmp / "out-lora2", tmp / "out")
                one["adapter_bytes"] = sum(p.stat().st_size for p in adapters[1].iterdir())
        rounds.append(one)
        print(
            f"round {r + 1}: {json.dumps({k: round(v, 3) for k, v in one.items()})}",
            file=sys.stderr,
        )
    stop_processes({"edge-fast": procs.pop("edge-fast")})

    # Multi-source: the same rate cap on each node; one node vs three.
    urls = []
    for i in (1, 2, 3):
        port = free_port()
        procs[f"edge-{i}"] = start_cachenet(
            tmp, f"edge-{i}", _edge_args(tmp / f"edge-{i}", origin, port, args.egress_rate)
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_ready(url)
    multi_rounds = []
    manifest = json.loads(
        subprocess.run(
            ["curl", "-sf", f"{urls[0]}/v1/models/bench/model/revisions/main"], check=True, capture_output=True
        ).stdout
    )
    file_urls = [f"{u}/v1/models/bench/model/revisions/{manifest['revision']}/files/model.safetensors" for u in urls]
    for r in range(args.rounds):
        one = {}
        labels = ["one", "three", "aria2c"] if r % 2 == 0 else ["aria2c", "three", "one"]
        for label in labels:
            _drop_outputs(tmp)
            if label == "aria2c":
                wall, cpu = _timed(
                    [
                        "aria2c",
                        "-q",
                        "-x3",
                        "-s3",
                        "--file-allocation=none",
                        "-d",
                        str(tmp),
                        "-o",
                        "out-curl.safetensors",
                        *file_urls,
                    ]
                )
                _check_identical(tmp / "out-curl.safetensors", model)
                one["aria2c_s"], one["aria2c_cpu_s"] = wall, cpu
                continue
            sources = urls[:1] if label == "one" else urls
            rep = _pull("bench/model", sources, tmp / "store-multi", tmp / "out-multi", extra=["--no-fsync"])
            _check_identical(tmp / "out-multi" / "model.safetensors", model)
            one[f"{label}_report_s"] = rep["elapsed_s"]
            one[f"{label}_cli_s"] = rep["wall_s"]
            one[f"{label}_source_bytes"] = [s["bytes"] for s in rep["sources"]]
        multi_rounds.append(one)
        print(f"multi round {r + 1}: {json.dumps(one)}", file=sys.stderr)

    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    mkeys = ("one_report_s", "three_report_s", "three_cli_s", "aria2c_s", "aria2c_cpu_s")
    mmed = {k: statistics.median(r[k] for r in multi_rounds) for k in mkeys}
    gb = size / 1e9
    summary = {
        "model_bytes": size,
        "cold_pull_cli_over_curl_sync": round(med["pull_cli_s"] / med["curl_sync_s"], 3),
        "cold_pull_cli_over_curl": round(med["pull_cli_s"] / med["curl_s"], 3),
        "cold_pull_report_over_curl_sync": round(med["pull_report_s"] / med["curl_sync_s"], 3),
        "cold_pull_report_over_curl": round(med["pull_report_s"] / med["curl_s"], 3),
        "cold_pull_nofsync_report_over_curl": round(med["pull_nofsync_report_s"] / med["curl_s"], 3),
        "cold_pull_cpu_s_per_GB": round(med["pull_cpu_s"] / gb, 3),
        "curl_cpu_s_per_GB": round(med["curl_cpu_s"] / gb, 3),
        "curl_sync_cpu_s_per_GB": round(med["curl_sync_cpu_s"] / gb, 3),
        "cold_pull_GBps_report": round(gb / med["pull_report_s"], 3),
        "curl_GBps": round(gb / med["curl_s"], 3),
        "switch_time_fraction_of_cold_pull": round(med["switch_report_s"] / med["pull_report_s"], 4),
        "switch_cli_time_fraction_of_cold_pull_cli": round(med["switch_cli_s"] / med["pull_cli_s"], 4),
        "switch_written_over_adapter_bytes": round(med["switch_written_bytes"] / med["adapter_bytes"], 4),
        "switch_fetched_over_adapter_bytes": round(med["switch_fetched_bytes"] / med["adapter_bytes"], 4),
        "three_sources_report_over_aria2c": round(mmed["three_report_s"] / mmed["aria2c_s"], 3),
        "three_sources_cli_over_aria2c": round(mmed["three_cli_s"] / mmed["aria2c_s"], 3),
        "multi_source_speedup": round(mmed["one_report_s"] / mmed["three_report_s"], 3),
        "egress_rate_per_node": args.egress_rate,
    }
    return {
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "summary": summary,
        "medians_s": {k: round(v, 4) for k, v in med.items()},
        "multi_medians_s": {k: round(v, 4) for k, v in mmed.items()},
        "rounds": rounds,
        "multi_rounds": multi_rounds,
        "setup": {
            "model": f"{args.tensors} float32 tensors, {size} bytes (bench.publish_throughput.make_model)",
            "adapters": "two PEFT-style adapters of ~4.7 MB published with --base bench/model",
            "client": "python -m cachenet pull --json (default settings: 8 blocks in flight, 4 per source; "
            "every block verified by XXH3 id + BLAKE3, written in place, one fsync per file unless --no-fsync)",
            "curl": "curl -o from nginx (sendfile, 2 workers); curl_sync adds `&& sync`",
            "aria2c": "aria2c -x3 -s3 with the file URL of each of the three rate-capped edges",
            "cpu": "user + system seconds of the command and its children (getrusage RUSAGE_CHILDREN)",
            "edges": "hold every block before the timed pulls (warmed once, data folders copied)",
            "order": "interleaved; curl first in even rounds, aria2c first in odd multi rounds",
        },
        "notes": [
            "pull_cli_s includes the CLI's start-up; pull_report_s is the pull's own time from manifest "
            "request to renamed files.",
            "switch: lora-2 written into a new folder while the base's files are local (./out); the base "
            "file is hard-linked, switch_written_bytes counts files that are not links of ./out.",
        ],
    }


def _make_adapter(folder: Path, *, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(24):
        tensors[f"base_model.model.layer.{i}.lora_A.weight"] = rng.standard_normal((16, 1536), dtype=np.float32)
        tensors[f"base_model.model.layer.{i}.lora_B.weight"] = rng.standard_normal((1536, 16), dtype=np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "target_modules": ["layer"],
        "base_model_name_or_path": "bench/model",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _pull(
    name: str,
    sources: list[str],
    store: Path,
    out: Path | None,
    *,
    blocks_only: bool = False,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    argv = ["pull", name, "--store", str(store), "--json", *(extra or [])]
    for s in sources:
        argv += ["--source", s]
    argv += ["--blocks-only"] if blocks_only or out is None else ["--out", str(out)]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "cachenet", *argv], check=True, capture_output=True)
    report: dict[str, Any] = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return report


def _edge_args(data: Path, origin: str, port: int, rate: str | None) -> list[str]:
    argv = [
        "edge",
        "serve",
        "--node-id",
        data.name,
        "--data",
        str(data),
        "--capacity",
        "8GiB",
        "--origin",
        origin,
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    return argv + (["--egress-rate", rate] if rate else [])


def _check_identical(got: Path, want: Path) -> None:
    if got.stat().st_size != want.stat().st_size or subprocess.run(["cmp", "-s", str(got), str(want)]).returncode:
        sys.exit(f"{got} differs from {want}")


def _drop_outputs(tmp: Path) -> None:
    for name in (
        "out",
        "out-nofsync",
        "out-lora2",
        "out-multi",
        "store",
        "store-nofsync",
        "store-multi",
        "store-cold-blocks",
        "out-curl.safetensors",
    ):
        path = tmp / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


if __name__ == "__main__":
    main()
