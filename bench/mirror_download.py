"""Hugging Face mirror: first download through the mirror vs straight from the upstream, and the second one.

Both origins run as real servers on loopback: the upstream holds the real model
all-MiniLM-L6-v2; each round starts an empty mirror with `--upstream`, then times
`huggingface_hub.snapshot_download` (fresh client cache every time) straight from the
upstream, through the empty mirror (pull-through: fetched, cut into blocks, stored,
served), and through the mirror again (served from its blocks, no upstream request).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from huggingface_hub import snapshot_download

from bench.machine import write_result
from bench.processes import free_port
from cluster.demomodels import REAL_MODEL_NAME, real_model_dir

__all__ = ("main",)


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachenet", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server on {port} did not start")


def _timed_download(endpoint: str, cache: Path) -> float:
    started = time.perf_counter()
    snapshot_download(REAL_MODEL_NAME, endpoint=endpoint, cache_dir=cache)
    return time.perf_counter() - started


def main() -> None:
    """Run the benchmark and write bench/results/mirror_download.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    direct, first, second = [], [], []
    with tempfile.TemporaryDirectory(prefix="cachenet-mirror-bench-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cachenet",
                "publish",
                str(real_model_dir()),
                "--name",
                REAL_MODEL_NAME,
                "--data",
                str(work / "upstream"),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        up_port = free_port()
        upstream = _start(["origin", "serve", "--data", str(work / "upstream")], up_port)
        try:
            for r in range(args.rounds):
                port = free_port()
                mirror = _start(
                    [
                        "origin",
                        "serve",
                        "--data",
                        str(work / f"mirror-{r}"),
                        "--upstream",
                        f"http://127.0.0.1:{up_port}",
                    ],
                    port,
                )
                try:
                    direct.append(_timed_download(f"http://127.0.0.1:{up_port}", work / f"c-direct-{r}"))
                    first.append(_timed_download(f"http://127.0.0.1:{port}", work / f"c-first-{r}"))
                    second.append(_timed_download(f"http://127.0.0.1:{port}", work / f"c-second-{r}"))
                finally:
                    mirror.terminate()
                    mirror.wait()
        finally:
            upstream.terminate()
            upstream.wait()
    d, f, s = statistics.median(direct), statistics.median(first), statistics.median(second)
    result = {
        "model": REAL_MODEL_NAME,
        "model_bytes": sum(p.stat().st_size for p in real_model_dir().rglob("*") if p.is_file()),
        "rounds": args.rounds,
        "direct_s": direct,
        "mirror_first_s": first,
        "mirror_second_s": second,
        "first_through_mirror_over_direct": round(f / d, 3),
        "second_over_first": round(s / f, 3),
        "second_over_direct": round(s / d, 3),
        "note": "loopback, so the upstream is as fast as the mirror; against a remote hub the second "
        "download's advantage is the WAN transfer it avoids",
    }
    path = write_result("mirror_download", result)
    print(
        f"first through mirror / direct = {result['first_through_mirror_over_direct']}; "
        f"second / first = {result['second_over_first']}; wrote {path}"
    )


if __name__ == "__main__":
    main()
