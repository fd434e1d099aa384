"""N devices pull N different LoRA variants of one base at once: multicast versus unicast only.

One run on loopback, each server its own process: an origin holding the real model
all-MiniLM-L6-v2 and N LoRA variants of it, and for every configuration a fresh edge
node whose egress is capped by `--egress-rate` (multicast sessions, unicast and repair
share the cap). The devices are N concurrent `python -m cachenet pull` processes, each
with its own block store, `--multicast on` or `--multicast off`. For each N and each
loss rate (the sender's test hook drops that share of datagrams, in the main pass and in
the repair pass alike) it records the node's egress bytes by kind (from its /metrics) and
the time from starting the devices to the last one finishing, and compares them with
unicast only and with the ideal (the backbone once plus every adapter once). Every
device's files are checked byte for byte.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from bench.machine import write_result
from bench.processes import free_port, run_cachenet, start_cachenet, stop_processes, wait_ready
from cluster.demomodels import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

__all__ = ("main",)

TOKEN: Final = "bench-token"
# A device process: imports everything first, says it is ready, waits for the start signal,
# then runs the CLI. So all devices ask at once, whatever Python's start-up costs.
DEVICE: Final = """
import pathlib, sys, time
from cachenet.cli import main
import clients.puller, clients.multicast.session
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(main(sys.argv[3:]))
"""


def main() -> None:
    """Run the benchmark and write bench/results/multicast_delivery.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="2,8,32", help="device counts (default 2,8,32)")
    parser.add_argument("--loss", default="0,0.01,0.05", help="datagram loss rates (default 0,0.01,0.05)")
    parser.add_argument("--egress-rate", default="100Mbit", help="the edge node's egress cap (default 100Mbit)")
    args = parser.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    losses = [float(x) for x in args.loss.split(",")]
    with tempfile.TemporaryDirectory(prefix="cachenet-mcbench-") as tmp_name:
        tmp = Path(tmp_name)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            result = _run(tmp, counts, losses, args.egress_rate, procs)
        finally:
            stop_processes(procs)
    path = write_result("multicast_delivery", result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {path}")


def _run(
    tmp: Path, counts: list[int], losses: list[float], egress_rate: str, procs: dict[str, "subprocess.Popen[bytes]"]
) -> dict[str, Any]:
    origin_port = free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    procs["origin"] = start_cachenet(
        tmp, "origin", ["origin", "serve", "--data", str(tmp / "origin"), "--port", str(origin_port), "--token", TOKEN]
    )
    wait_ready(origin)
    publish = ["--origin", origin, "--token", TOKEN, "--no-progress"]
    run_cachenet(["publish", str(real_model_dir()), "--name", REAL_MODEL_NAME, *publish])
    expected: dict[str, dict[str, str]] = {}
    base_files = _hashes(real_model_dir())
    for i in range(max(counts)):
        folder = make_lora_adapter(tmp / "adapters" / str(i), seed=1000 + i)
        run_cachenet(["publish", str(folder), "--name", f"bench/variant-{i}", "--base", REAL_MODEL_NAME, *publish])
        expected[f"bench/variant-{i}"] = {**base_files, **_hashes(folder)}
    runs: list[dict[str, Any]] = []
    for n in counts:
        names = [f"bench/variant-{i}" for i in range(n)]
        ideal = _ideal_bytes(origin, names)
        unicast = _one(tmp, origin, names, expected, egress_rate, mode="off", loss=0.0, procs=procs)
        runs.append({"devices": n, "mode": "unicast", "loss": 0.0, "ideal_bytes": ideal, **unicast})
        for loss in losses:
            mc = _one(tmp, origin, names, expected, egress_rate, mode="on", loss=loss, procs=procs)
            runs.append(
                {
                    "devices": n,
                    "mode": "multicast",
                    "loss": loss,
                    "ideal_bytes": ideal,
                    **mc,
                    "egress_vs_ideal": round(mc["egress_bytes"] / ideal, 4),
                    "egress_vs_unicast": round(mc["egress_bytes"] / unicast["egress_bytes"], 4),
                    "time_vs_unicast": round(mc["time_to_last_s"] / unicast["time_to_last_s"], 4),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    return {
        "egress_rate": egress_rate,
        "model": REAL_MODEL_NAME,
        "runs": runs,
        "summary": [
            {
                k: r[k]
                for k in (
                    "devices",
                    "mode",
                    "loss",
                    "egress_vs_ideal",
                    "egress_vs_unicast",
                    "time_vs_unicast",
                    "repair_vs_dropped",
                )
                if k in r
            }
            for r in runs
            if r["mode"] == "multicast"
        ],
    }


def _one(
    tmp: Path,
    origin: str,
    names: list[str],
    expected: dict[str, dict[str, str]],
    egress_rate: str,
    *,
    mode: str,
    loss: float,
    procs: dict[str, "subprocess.Popen[bytes]"],
) -> dict[str, Any]:
    tag = f"{mode}-{len(names)}-{loss}"
    work = tmp / tag
    port = free_port()
    edge = f"http://127.0.0.1:{port}"
    procs[tag] = start_cachenet(
        tmp,
        f"edge-{tag}",
        [
            "edge",
            "serve",
            "--node-id",
            "bench-edge",
            "--data",
            str(work / "edge"),
            "--capacity",
            "4GiB",
            "--origin",
            origin,
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--egress-rate",
            egress_rate,
            "--multicast-rate",
            egress_rate,
            "--multicast-window",
            "0.5",
            "--multicast-test-drop",
            str(loss),
        ],
    )
    wait_ready(edge)
    # Warm the node (as a placement plan would): the devices then measure delivery, not origin misses.
    run_cachenet(
        [
            "pull",
            names[0],
            "--source",
            edge,
            "--store",
            str(work / "warm"),
            "--blocks-only",
            "--multicast",
            "off",
            "--no-fsync",
            "--no-progress",
        ]
    )
    before = _egress(edge)
    go = work / "go"
    devices = []
    for i, name in enumerate(names):
        argv = [
            "pull",
            name,
            "--source",
            edge,
            "--store",
            str(work / f"store-{i}"),
            "--out",
            str(work / f"out-{i}"),
            "--multicast",
            mode,
            "--json",
            "--no-fsync",
        ]
        logs = (open(work / f"device-{i}.json", "wb"), open(work / f"device-{i}.log", "wb"))  # noqa: SIM115
        devices.append(
            subprocess.Popen(
                [sys.executable, "-c", DEVICE, str(work / f"ready-{i}"), str(go), *argv], stdout=logs[0], stderr=logs[1]
            )
        )
    while not all((work / f"ready-{i}").exists() for i in range(len(names))):
        time.sleep(0.01)
    started = time.perf_counter()
    go.touch()
    finished: dict[int, float] = {}
    while len(finished) < len(devices):
        for i, p in enumerate(devices):
            if i not in finished and p.poll() is not None:
                finished[i] = time.perf_counter() - started
                if p.returncode != 0:
                    sys.exit(f"device {i} failed: {(work / f'device-{i}.log').read_text()[-2000:]}")
        time.sleep(0.005)
    reports = [json.loads((work / f"device-{i}.json").read_text()) for i in range(len(devices))]
    last = max(finished.values())
    after = _egress(edge)
    stop_processes({tag: procs.pop(tag)})
    for i, name in enumerate(names):
        if _hashes(work / f"out-{i}") != expected[name]:
            sys.exit(f"device {i} ({name}) wrote files that differ from the published ones")
    kinds = ("multicast", "multicast_repair", "unicast", "repair")
    by_kind = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in kinds}
    missed = sum((r["multicast"] or {}).get("missed_bytes", 0) for r in reports)
    dropped = after.get("dropped", 0.0) - before.get("dropped", 0.0)
    result: dict[str, Any] = {
        "egress_bytes": int(sum(by_kind.values())),
        "egress_by_kind": {k: int(v) for k, v in by_kind.items()},
        "time_to_last_s": round(last, 3),
        "median_completion_s": round(sorted(finished.values())[len(finished) // 2], 3),
        "sessions": len({(r["multicast"] or {}).get("session") for r in reports} - {None}),
        "missed_bytes": missed,
        "dropped_bytes": int(dropped),
    }
    if dropped:
        # Repair traffic (the multicast repair pass plus unicast repairs) per byte the sender dropped.
        result["repair_vs_dropped"] = round((by_kind["repair"] + by_kind["multicast_repair"]) / dropped, 4)
    shutil.rmtree(work, ignore_errors=True)  # 32 devices wrote 32 copies of the model
    return result


def _egress(edge: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{edge}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cachenet_edge_egress_bytes_total":
                out[s.labels["kind"]] = s.value
            elif s.name == "cachenet_edge_multicast_test_dropped_bytes_total" and s.labels["kind"] == "multicast":
                out["dropped"] = s.value  # in the main pass
    return out


def _ideal_bytes(origin: str, names: list[str]) -> int:
    blocks: dict[str, int] = {}
    for name in [REAL_MODEL_NAME, *names]:
        with urllib.request.urlopen(f"{origin}/v1/models/{name}/revisions/main", timeout=10) as resp:
            manifest = json.loads(resp.read())
        for f in manifest["files"]:
            for block_id, _blake3, size in f["blocks"]:
                blocks[block_id] = size
    return sum(blocks.values())


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
