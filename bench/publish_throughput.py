"""Publish throughput on a 1 GiB synthetic safetensors file (~300 tensors) versus `sha256sum`.

Both run on the same warm file in the same run, interleaved; the ratio is what counts.
`cachenet publish` does more than sha256sum: it parses the header, hashes every tensor
with XXH3-128 and BLAKE3, computes the file's SHA-256 (needed by the Hugging Face
protocol) and writes every block to the store with fsync.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bench.machine import write_result

__all__ = ("main",)


def make_model(path: Path, *, total_bytes: int, tensors: int, seed: int = 0) -> Path:
    """A safetensors file of about `total_bytes` with `tensors` float32 tensors of varied sizes."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.2, 1.8, tensors)
    sizes = (weights / weights.sum() * total_bytes / 4).astype(int)
    data = {f"layer.{i}.weight": rng.standard_normal(int(n), dtype=np.float32) for i, n in enumerate(sizes)}
    save_file(data, str(path))
    return path


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and write bench/results/publish_throughput.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024 MiB)")
    parser.add_argument("--tensors", type=int, default=300, help="number of tensors (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cachenet-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        model = make_model(model_dir / "model.safetensors", total_bytes=args.size_mib << 20, tensors=args.tensors)
        size = model.stat().st_size
        subprocess.run(["sha256sum", str(model)], check=True, stdout=subprocess.DEVNULL)  # warm the page cache
        sha_times, publish_times = [], []
        for r in range(args.rounds):
            sha_times.append(_timed(["sha256sum", str(model)]))
            data = work / f"origin-{r}"
            publish_times.append(
                _timed(
                    [
                        sys.executable,
                        "-m",
                        "cachenet",
                        "publish",
                        str(model_dir),
                        "--name",
                        "bench/model",
                        "--data",
                        str(data),
                        "--no-progress",
                    ]
                )
            )
            shutil.rmtree(data)
    sha, pub = statistics.median(sha_times), statistics.median(publish_times)
    result = {
        "file_bytes": size,
        "tensors": args.tensors,
        "rounds": args.rounds,
        "sha256sum_s": sha_times,
        "cachenet_publish_s": publish_times,
        "sha256sum_gb_per_s": round(size / sha / 1e9, 3),
        "cachenet_publish_gb_per_s": round(size / pub / 1e9, 3),
        "publish_time_over_sha256sum_time": round(pub / sha, 3),
        "note": "publish = parse + XXH3/BLAKE3 per tensor + whole-file SHA-256 + write and fsync every block, "
        "CLI start-up included; sha256sum only hashes",
    }
    path = write_result("publish_throughput", result)
    print(
        f"publish takes {result['publish_time_over_sha256sum_time']}x the time of sha256sum "
        f"({result['cachenet_publish_gb_per_s']} vs {result['sha256sum_gb_per_s']} GB/s); wrote {path}"
    )


if __name__ == "__main__":
    main()
