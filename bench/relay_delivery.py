"""A plan delivered along the relay tree versus each node fetching alone, over rate-limited links.

Real links: one Linux network namespace per node (the origin and six edge nodes), a veth pair per
backhaul link of a tree (origin - e1; e1 - e2, e3; e2 - e4, e5; e3 - e6), each end shaped by
`tc tbf` at `--link-rate` (and `netem` delay when the kernel has it), IP forwarding and static
routes so that every node reaches every other along the tree. The bench creates them (as root)
and removes them; without root, `ip` or `tc` (or a kernel without network namespaces or tbf) it
says so and exits 0 with nothing measured.

The origin holds a backbone of `--backbone-mib` MiB and `--adapters` LoRA adapters on it; the
topology's latency requirement makes the placement put the backbone on every node. For each mode,
in alternating order, fresh edge nodes and a controller (nodes do not pace: the links do) run one
recompute: `relay` sends each node its relay schedule, `no-relay` does not (each node fetches from
peers that already hold a block, else from the origin). Measured: the origin's egress
(`cachenet_origin_bytes_served_total`), the plan's completion time, and both against the ideal
(one copy of the placed blocks from the origin; the tree's bottleneck-link time).
"""

import argparse
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

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.machine import write_result
from cachenet.units import parse_rate

__all__ = ("main",)

TOKEN: Final = "bench-token"
PREFIX: Final = "cnrelay"
TREE: Final = (("origin", "e1"), ("e1", "e2"), ("e1", "e3"), ("e2", "e4"), ("e2", "e5"), ("e3", "e6"))
NODES: Final = ("origin", "e1", "e2", "e3", "e4", "e5", "e6")
ORIGIN_PORT, EDGE_PORT, CONTROLLER_PORT = 18700, 18710, 18790


def main() -> None:
    """Run the benchmark and write bench/results/relay_delivery.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone-mib", type=int, default=1024, help="backbone size in MiB (default 1024)")
    parser.add_argument("--adapters", type=int, default=20, help="LoRA adapters on the backbone (default 20)")
    parser.add_argument("--link-rate", default="400Mbit", help="rate of every backhaul link (default 400Mbit)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (relay, no-relay), alternating order")
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # the measuring half, run in the origin's namespace
    args = parser.parse_args()
    if args.inside:
        _measure(json.loads(args.inside))
        return
    problem = _missing_support()
    if problem:
        print(f"relay_delivery: {problem}; nothing measured")
        return
    rate_bps = parse_rate(args.link_rate) * 8
    with tempfile.TemporaryDirectory(prefix="cachenet-relay-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        netem = _make_network(rate_bps)
        try:
            config = {
                "tmp": str(tmp),
                "backbone_mib": args.backbone_mib,
                "adapters": args.adapters,
                "rate_bps": rate_bps,
                "rounds": args.rounds,
                "netem": netem,
            }
            cmd = ["ip", "netns", "exec", _ns("origin"), sys.executable, "-m", "bench.relay_delivery"]
            subprocess.run([*cmd, "--inside", json.dumps(config)], check=True)
        finally:
            _remove_network()
        result = json.loads((tmp / "result.json").read_text())
    result["load_avg"] = os.getloadavg()
    path = write_result("relay_delivery", result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {path}")


# -- the network ----------------------------------------------------------------------------------


def _ns(node: str) -> str:
    return f"{PREFIX}-{node}"


def _ip(node: str) -> str:
    return f"10.77.{NODES.index(node)}.1"


def _missing_support() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces, veth pairs and tc qdiscs"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command (iproute2)"
    probe = f"{PREFIX}-probe"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "1gbit",
             "burst", "64kb", "latency", "100ms")  # fmt: skip
    except subprocess.CalledProcessError as e:
        return f"network namespaces with veth and tc tbf are not available here ({e.stderr.strip()[:200]})"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _make_network(rate_bps: float) -> bool:
    """Namespaces, shaped veth links, forwarding and routes along the tree; True when netem delay is on."""
    import networkx as nx

    _remove_network()
    for node in NODES:
        _run("ip", "netns", "add", _ns(node))
        _run("ip", "-n", _ns(node), "link", "set", "lo", "up")
        _run("ip", "-n", _ns(node), "addr", "add", f"{_ip(node)}/32", "dev", "lo")
        _run("ip", "netns", "exec", _ns(node), "sysctl", "-qw", "net.ipv4.ip_forward=1")
    netem = True
    link_addr: dict[tuple[str, str], str] = {}
    for k, (a, b) in enumerate(TREE):
        ea, eb = f"l{k}a", f"l{k}b"
        _run("ip", "link", "add", ea, "netns", _ns(a), "type", "veth", "peer", "name", eb, "netns", _ns(b))
        for node, dev, host in ((a, ea, 1), (b, eb, 2)):
            _run("ip", "-n", _ns(node), "addr", "add", f"10.78.{k}.{host}/30", "dev", dev)
            _run("ip", "-n", _ns(node), "link", "set", dev, "up")
            shape = ["tbf", "rate", f"{int(rate_bps)}bit", "burst", "256kb", "latency", "200ms"]
            if netem:
                done = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        _ns(node),
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "root",
                        "handle",
                        "1:",
                        "netem",
                        "delay",
                        "1ms",
                    ],  # fmt: skip
                    capture_output=True,
                )
                netem = done.returncode == 0
            parent = ["parent", "1:1", "handle", "10:"] if netem else ["root"]
            _run("ip", "netns", "exec", _ns(node), "tc", "qdisc", "add", "dev", dev, *parent, *shape)
        link_addr[(a, b)], link_addr[(b, a)] = f"10.78.{k}.2", f"10.78.{k}.1"
    tree = nx.Graph(TREE)
    for src in NODES:
        paths = nx.single_source_shortest_path(tree, src)
        for dst, path in paths.items():
            if dst != src:
                hop = link_addr[(src, path[1])]
                _run("ip", "-n", _ns(src), "route", "add", f"{_ip(dst)}/32", "via", hop, "src", _ip(src))
    return netem


def _remove_network() -> None:
    for node in (*NODES, "probe"):
        subprocess.run(["ip", "netns", "del", f"{PREFIX}-{node}"], capture_output=True)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


# -- the measuring half (inside the origin's namespace) ------------------------------------------


def _measure(config: dict[str, Any]) -> None:
    tmp = Path(config["tmp"])
    rate_bps = float(config["rate_bps"])
    backbone = _backbone(tmp / "backbone", int(config["backbone_mib"]))
    origin_data = tmp / "origin"
    _cachenet("publish", str(backbone), "--name", "bench/backbone", "--data", str(origin_data))
    from cluster.demomodels import make_lora_adapter

    for i in range(int(config["adapters"])):
        folder = make_lora_adapter(tmp / f"adapter-{i}", seed=i, r=8)
        _cachenet("publish", str(folder), "--name", f"bench/adapter-{i}", "--base", "bench/backbone",
                  "--data", str(origin_data))  # fmt: skip
    backbone_bytes = sum(p.stat().st_size for p in backbone.iterdir())
    topology = _topology(tmp / "topology.yaml", rate_bps, backbone_bytes)
    origin_url = f"http://{_ip('origin')}:{ORIGIN_PORT}"
    procs = [_start("origin", tmp, "origin", "serve", "--data", str(origin_data), "--host", _ip("origin"),
                    "--port", str(ORIGIN_PORT), "--token", TOKEN)]  # fmt: skip
    runs = []
    try:
        _wait(origin_url)
        modes = []
        for r in range(int(config["rounds"])):
            modes += ["relay", "no-relay"] if r % 2 == 0 else ["no-relay", "relay"]
        for n, mode in enumerate(modes):
            runs.append(_one_run(tmp / f"run-{n}", mode, origin_url, topology))
            print(f"{mode}: {json.dumps({k: v for k, v in runs[-1].items() if k != 'delivery'})}", flush=True)
    finally:
        _stop(procs)
    summary = _summary(runs, rate_bps, backbone_bytes)
    doc = {"config": {**config, "link_rate_bps": rate_bps, "backbone_bytes": backbone_bytes}, "runs": runs,
           "summary": summary}  # fmt: skip
    (tmp / "result.json").write_text(json.dumps(doc))


def _one_run(folder: Path, mode: str, origin_url: str, topology: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    procs = []
    nodes = []
    try:
        for node in NODES[1:]:
            url = f"http://{_ip(node)}:{EDGE_PORT}"
            nodes.append(f"{node}={url}")
            procs.append(_start(node, folder, "edge", "serve", "--node-id", node, "--data", str(folder / node),
                                "--capacity", "100GB", "--origin", origin_url, "--token", TOKEN, "--host", _ip(node),
                                "--port", str(EDGE_PORT), "--no-multicast", "--scrub-rate", "1GB"))  # fmt: skip
        controller = f"http://{_ip('origin')}:{CONTROLLER_PORT}"
        extra = ["--no-relay"] if mode == "no-relay" else []
        procs.append(_start("origin", folder, "controller", "serve", "--topology", str(topology), "--origin",
                            origin_url, "--data", str(folder / "controller"), "--token", TOKEN, "--host", _ip("origin"),
                            "--port", str(CONTROLLER_PORT), "--no-pace", *[a for e in nodes for a in ("--node", e)],
                            *extra))  # fmt: skip
        for entry in nodes:
            _wait(entry.split("=", 1)[1])
        _wait(controller)
        time.sleep(1.5)  # the controller's first holdings read
        before = _metric(origin_url, "cachenet_origin_bytes_served_total")
        started = time.monotonic()
        run = _http(f"{controller}/v1/placement/recompute", method="POST", body=b"{}")
        delivery: dict[str, Any] = {}
        while time.monotonic() - started < 3600:
            delivery = _http(f"{controller}/v1/deliveries")["deliveries"][0]
            if delivery["state"] != "delivering":
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        served = _metric(origin_url, "cachenet_origin_bytes_served_total") - before
    finally:
        _stop(procs)
    placed = sum(n["bytes"] for n in run["nodes"].values())
    distinct = run["inputs"]["bytes"]
    origin_link = next(x for x in delivery["links"] if "origin" in (x["a"], x["b"]))
    return {
        "mode": mode,
        "state": delivery["state"],
        "completion_s": round(elapsed, 3),
        "delivery_time_s": delivery["time_s"],
        "origin_egress_bytes": int(served),
        "placed_bytes_all_nodes": placed,
        "catalogue_bytes": distinct,
        "one_copy_bytes": origin_link["planned"],
        "blocks_per_node": {k: v["blocks"] for k, v in run["nodes"].items()},
        "delivery": delivery,
    }


def _summary(runs: list[dict[str, Any]], rate_bps: float, backbone_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("relay", "no-relay"):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        one_copy = mine[0]["one_copy_bytes"]
        bottleneck_s = max(x["planned"] for x in mine[0]["delivery"]["links"]) * 8 / rate_bps
        egress = [r["origin_egress_bytes"] for r in mine]
        times = [r["completion_s"] for r in mine]
        out[mode] = {
            "origin_egress_bytes": egress,
            "origin_egress_vs_one_copy": [round(e / one_copy, 3) for e in egress],
            "completion_s": times,
            "bottleneck_link_s": round(bottleneck_s, 3),
            "completion_vs_bottleneck": [round(t / bottleneck_s, 3) for t in times],
            "states": [r["state"] for r in mine],
        }
    out["backbone_bytes"] = backbone_bytes
    return out


def _backbone(folder: Path, mib: int) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    rng = np.random.default_rng(22)
    per = 16 * 1024 * 1024
    tensors = {f"layer.{i}.weight": rng.standard_normal(per // 4, dtype=np.float32) for i in range(max(1, mib // 16))}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "bench-backbone"}')
    return folder


def _topology(path: Path, rate_bps: float, backbone_bytes: int) -> Path:
    """Each node serves one cell; fetching the backbone from another node misses the latency requirement."""
    edges = NODES[1:]
    doc = {
        "name": "relay-bench",
        "overhead_s": 0.0,
        "latency_requirement_s": round(0.5 * 8 * backbone_bytes / rate_bps, 3),
        "radio": {"bandwidth_hz": 1e8, "tx_power_dbm": 43.0, "noise_dbm_per_hz": -174.0, "rayleigh": False},
        "servers": [{"id": e, "position": [1000.0 * i, 0.0], "capacity": "100GB"} for i, e in enumerate(edges)],
        "nodes": ["origin"],
        "origin": "origin",
        "backhaul": [{"a": a, "b": b, "rate_bps": rate_bps} for a, b in TREE],
        "users": [{"id": f"cell-{e}", "position": [1000.0 * i + 10, 0.0], "server": e} for i, e in enumerate(edges)],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _cachenet(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "cachenet", *argv], check=True, stdout=subprocess.DEVNULL)


def _start(node: str, folder: Path, *argv: str) -> "subprocess.Popen[bytes]":
    log = open(folder / f"{node}-{argv[0]}.log", "wb")  # noqa: SIM115 - the child holds it
    cmd = [sys.executable, "-m", "cachenet", *argv]
    if node != "origin":
        cmd = ["ip", "netns", "exec", _ns(node), *cmd]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _stop(procs: list["subprocess.Popen[bytes]"]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} not ready after {timeout_s} s")


def _http(url: str, *, method: str = "GET", body: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


if __name__ == "__main__":
    main()
