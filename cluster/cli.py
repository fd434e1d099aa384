"""`cachenet up`: run the local cluster on loopback ports, optionally with the demo."""

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cachenet.units import format_bytes

if TYPE_CHECKING:
    from cluster.launcher import Cluster

__all__ = ("register",)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `up` to the `cachenet` parser."""
    up = sub.add_parser(
        "up", help="run a local cluster (origin, edge nodes, controller) on loopback ports; Ctrl-C stops it"
    )
    up.add_argument(
        "--data",
        type=Path,
        default=Path("cachenet-data"),
        help="data folder of the whole cluster (default ./cachenet-data)",
    )
    up.add_argument(
        "--base-port", type=int, default=8700, help="first port; servers take the following ones (default 8700)"
    )
    up.add_argument("--token", help="operator token (default: a new random one, saved in DATA/token)")
    up.add_argument(
        "--topology", type=Path, default=None, help="topology YAML (default: the demo topology, 3 edge nodes)"
    )
    up.add_argument(
        "--demo", action="store_true", help="publish the real model and LoRA variants, then pull one as a device"
    )
    up.add_argument(
        "--exit-after-demo", action="store_true", help="stop the cluster when the demo is done (for scripts and tests)"
    )
    up.add_argument("--json", action="store_true", help="print the demo summary as JSON")
    up.set_defaults(func=_up)


def default_topology() -> Path:
    """The demo topology shipped in deploy/topologies (3 edge nodes)."""
    return Path(__file__).resolve().parents[1] / "deploy" / "topologies" / "demo.yaml"


def _up(args: argparse.Namespace) -> int:
    from cachenet.errors import BadInput
    from cachenet.localcluster import write_cluster
    from cluster.launcher import Cluster, taken_ports
    from placement.topology import load_topology

    data: Path = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    token_file = data / "token"
    token = args.token or (token_file.read_text().strip() if token_file.exists() else secrets.token_urlsafe(24))
    token_file.write_text(token)
    token_file.chmod(0o600)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    topology_path = args.topology or default_topology()
    topology = load_topology(topology_path)
    roles = ["origin", "controller", *(server.id for server in topology.servers)]
    ports = range(args.base_port, args.base_port + len(roles))
    taken = taken_ports("127.0.0.1", ports)
    if taken:
        names = ", ".join(f"{p} ({roles[p - args.base_port]})" for p in taken)
        are = "port {} is" if len(taken) == 1 else "ports {} are"
        raise BadInput(
            f"{are.format(names)} already in use on 127.0.0.1 (is another `cachenet up` running?); "
            f"stop it, or pick free ports with --base-port (this cluster needs {len(roles)} from the base port)"
        )
    secret = {"CACHENET_TOKEN": token}  # by environment: command lines are public (`ps`)
    with Cluster(data) as cluster:
        origin_url = f"http://127.0.0.1:{args.base_port}"
        controller_url = f"http://127.0.0.1:{args.base_port + 1}"
        cluster.start(
            "origin",
            origin_url,
            ["origin", "serve", "--data", str(data / "origin"), "--port", str(args.base_port)],
            env=secret,
        )
        print(f"origin      {origin_url}   (logs in {data / 'logs'})", flush=True)
        edges: dict[str, str] = {}
        for i, server in enumerate(topology.servers):
            port = args.base_port + 2 + i
            url = f"http://127.0.0.1:{port}"
            cluster.start(
                server.id,
                url,
                [
                    "edge",
                    "serve",
                    "--node-id",
                    server.id,
                    "--data",
                    str(data / server.id),
                    "--capacity",
                    str(server.capacity_bytes),
                    "--origin",
                    origin_url,
                    "--port",
                    str(port),
                    "--controller",
                    controller_url,
                ],
                env=secret,
            )
            edges[server.id] = url
            print(f"{server.id:11} {url}   capacity {format_bytes(server.capacity_bytes)}", flush=True)
        cluster.start(
            "controller",
            controller_url,
            [
                "controller",
                "serve",
                "--topology",
                str(topology_path),
                "--origin",
                origin_url,
                "--port",
                str(args.base_port + 1),
                "--data",
                str(data / "controller"),
                *[arg for sid, url in edges.items() for arg in ("--node", f"{sid}={url}")],
            ],
            env=secret,
        )
        print(f"controller  {controller_url}", flush=True)
        print(f"operator token in {token_file}", flush=True)
        cluster_file = write_cluster(
            data,
            {"origin": origin_url, "controller": controller_url, "edges": edges, "pid": os.getpid()},
        )
        print(f"client commands find this cluster in {cluster_file} (run them here, or set CACHENET_CLUSTER={data})")
        try:
            if args.demo:
                from cluster.demo import run_demo

                summary = asyncio.run(
                    run_demo(
                        origin_url=origin_url,
                        controller_url=controller_url,
                        edge_url=next(iter(edges.values())),
                        token=token,
                        work_dir=data / "demo",
                    )
                )
                if args.json:
                    print(json.dumps(summary, indent=2))
                else:
                    for line in summary["lines"]:
                        print(line)
            if args.exit_after_demo:
                return 0
            _check_alive(cluster)
            print("cluster running; press Ctrl-C to stop", flush=True)
            try:
                while not stop.wait(0.5):
                    _check_alive(cluster)
            except KeyboardInterrupt:
                pass
            print("stopping the cluster", file=sys.stderr)
        finally:
            cluster_file.unlink(missing_ok=True)
    return 0


def _check_alive(cluster: "Cluster") -> None:
    """Raise (one line: which server, why, its log) as soon as a server of the cluster has exited."""
    from cachenet.errors import UpstreamUnavailable
    from cluster.launcher import exit_line

    dead = cluster.dead()
    if dead:
        raise UpstreamUnavailable(exit_line(dead[0]) + "; stopping the cluster")
