"""`cachenet edge serve`."""

import argparse
import dataclasses
import os
from pathlib import Path

from cachenet.config import load_settings
from cachenet.edge.config import DEFAULT_EDGE_PORT, POLICY_NAMES, EdgeSettings
from cachenet.server.options import add_tls_arguments
from cachenet.units import parse_rate, parse_size

__all__ = ("register",)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `edge serve` to the `cachenet` parser."""
    edge = sub.add_parser("edge", help="an edge cache node")
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    serve = edge_sub.add_parser("serve", help="run an edge node")
    serve.add_argument("--config", type=Path, help="settings file (TOML or YAML)")
    serve.add_argument("--node-id", help="this node's id (default edge-1)")
    serve.add_argument("--data", dest="data_dir", type=Path, help="data folder (default cachenet-data/edge-1)")
    serve.add_argument(
        "--capacity", dest="capacity_bytes", type=parse_size, help="storage budget, e.g. 10GiB (default 10GiB)"
    )
    serve.add_argument("--origin", dest="origin_url", help="origin URL (default http://127.0.0.1:8700)")
    serve.add_argument("--peer", dest="peers", action="append", help="a peer edge node URL (repeatable)")
    serve.add_argument("--controller", dest="controller_url", help="controller URL (for the block → node lookup table)")
    serve.add_argument("--policy", choices=POLICY_NAMES, help="replacement policy (default sharing-lfu)")
    serve.add_argument("--egress-rate", type=parse_rate, help="cap on the sending rate, e.g. 100Mbit or 50MB")
    serve.add_argument("--token", help="operator bearer token (default $CACHENET_TOKEN)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_EDGE_PORT})")
    serve.add_argument("--public-url", help="URL peers reach this node at (default http://HOST:PORT)")
    serve.add_argument("--scrub-rate", type=parse_rate, help="bytes/s re-verified in the background (default 50MB)")
    serve.add_argument(
        "--verify-on-read-max",
        dest="verify_on_read_max_bytes",
        type=parse_size,
        help="blocks up to this size are re-hashed on every read (default 1MiB)",
    )
    mc = serve.add_argument_group("multicast delivery")
    mc.add_argument(
        "--multicast-group", help="first multicast group address; sessions count up from it (default 239.255.77.1)"
    )
    mc.add_argument("--no-multicast", action="store_true", help="serve by unicast only")
    mc.add_argument("--multicast-groups", type=int, help="group addresses to use at once (default 16)")
    mc.add_argument("--multicast-port", type=int, help="UDP port of the groups (default: the HTTP port)")
    mc.add_argument("--multicast-ttl", type=int, help="hops multicast datagrams may travel (default 1)")
    mc.add_argument(
        "--multicast-interface",
        metavar="ADDR",
        help="IPv4 address of the interface to send from (default: --host when it is one address)",
    )
    mc.add_argument("--multicast-rate", type=parse_rate, help="fastest a session sends, e.g. 200Mbit (default 25MB)")
    mc.add_argument(
        "--multicast-window",
        dest="multicast_window_s",
        type=float,
        help="seconds joins are gathered into one plan (default 0.1)",
    )
    mc.add_argument(
        "--multicast-nack-window",
        dest="multicast_nack_window_s",
        type=float,
        help="seconds members may report losses after a session's main pass (default 0.3)",
    )
    mc.add_argument(
        "--multicast-repair-passes",
        type=int,
        help="repair passes by multicast at most before devices repair by unicast (default 3)",
    )
    mc.add_argument(
        "--multicast-piece",
        dest="multicast_piece_bytes",
        type=parse_size,
        help="block bytes per datagram (default 16KiB on loopback, else 1400)",
    )
    mc.add_argument("--multicast-test-drop", type=float, help=argparse.SUPPRESS)
    add_tls_arguments(serve)
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from cachenet.edge.app import create_app
    from cachenet.server.serve import run_app, tls_context

    keys = (
        "node_id",
        "data_dir",
        "capacity_bytes",
        "origin_url",
        "controller_url",
        "policy",
        "egress_rate",
        "token",
        "host",
        "port",
        "public_url",
        "scrub_rate",
        "verify_on_read_max_bytes",
        "multicast_group",
        "multicast_groups",
        "multicast_port",
        "multicast_ttl",
        "multicast_interface",
        "multicast_rate",
        "multicast_window_s",
        "multicast_nack_window_s",
        "multicast_repair_passes",
        "multicast_piece_bytes",
        "multicast_test_drop",
    )
    overrides = {k: getattr(args, k) for k in keys}
    overrides["peers"] = tuple(args.peers) if args.peers else None
    settings = load_settings(EdgeSettings, args.config, os.environ, overrides)
    if args.no_multicast:
        settings = dataclasses.replace(settings, multicast_group=None)
    return run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        name=f"edge {settings.node_id}",
        ssl_context=tls_context(args),
    )
