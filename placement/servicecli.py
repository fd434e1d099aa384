"""Commands that talk to the controller service: `controller serve`, `placement recompute|show`."""

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from cachenet.config import load_settings
from cachenet.httpclient import DEFAULT_TIMEOUT, auth_headers, raise_for_status
from cachenet.server.serve import add_tls_arguments, run_app, tls_context
from cachenet.units import format_bytes
from placement.config import DEFAULT_CONTROLLER_PORT, ControllerSettings

__all__ = ("add_controller_command", "add_service_commands")

_DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_CONTROLLER_PORT}"


def add_controller_command(sub: Any) -> None:
    """`cachenet controller serve`."""
    ctl = sub.add_parser("controller", help="the placement controller service")
    ctl_sub = ctl.add_subparsers(dest="controller_command", metavar="ACTION", required=True)
    serve = ctl_sub.add_parser("serve", help="run the controller")
    serve.add_argument("--config", type=Path, help="settings file (TOML or YAML)")
    serve.add_argument("--topology", type=Path, help="topology YAML (default deploy/topologies/demo.yaml)")
    serve.add_argument("--origin", dest="origin_url", help="origin URL (default http://127.0.0.1:8700)")
    serve.add_argument(
        "--node",
        dest="nodes",
        action="append",
        help="ID=URL of an edge node (default: 127.0.0.1:<port> from the topology)",
    )
    serve.add_argument("--data", dest="data_dir", type=Path, help="folder for runs the origin has not stored yet")
    serve.add_argument("--token", help="operator token (default $CACHENET_TOKEN); also sent to the nodes")
    serve.add_argument(
        "--interval", dest="interval_s", type=float, help="recompute every S seconds (default: only when asked)"
    )
    serve.add_argument("--solver", help="solver for periodic runs (default trimcaching-gen)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_CONTROLLER_PORT})")
    add_tls_arguments(serve)
    serve.set_defaults(func=_serve)


def add_service_commands(commands: Any) -> None:
    """`placement recompute` and `placement show` (they call a running controller)."""
    rec = commands.add_parser("recompute", help="ask the controller to recompute the placement now")
    rec.add_argument("--controller", default=_DEFAULT_URL, help=f"controller URL (default {_DEFAULT_URL})")
    rec.add_argument(
        "--solver", help="trimcaching-gen (default), trimcaching-gen-density, trimcaching-spec, independent, optimal"
    )
    rec.add_argument("--token", help="operator token (default $CACHENET_TOKEN)")
    rec.add_argument("--json", action="store_true", help="print the run as JSON")
    rec.set_defaults(func=_recompute)
    show = commands.add_parser("show", help="show the current placement and recent runs")
    show.add_argument("--controller", default=_DEFAULT_URL, help=f"controller URL (default {_DEFAULT_URL})")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)


def _serve(args: argparse.Namespace) -> int:
    from placement.app import create_app

    keys = ("topology", "origin_url", "data_dir", "token", "interval_s", "solver", "host", "port")
    overrides: dict[str, Any] = {k: getattr(args, k) for k in keys}
    overrides["nodes"] = tuple(args.nodes) if args.nodes else None
    settings = load_settings(ControllerSettings, args.config, os.environ, overrides)
    return run_app(
        create_app(settings), host=settings.host, port=settings.port, name="controller", ssl_context=tls_context(args)
    )


def _recompute(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        token = args.token or os.environ.get("CACHENET_TOKEN")
        async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, headers=auth_headers(token)) as s:
            body = {"solver": args.solver} if args.solver else {}
            async with s.post(f"{args.controller.rstrip('/')}/v1/placement/recompute", json=body) as resp:
                await raise_for_status(resp)
                result: dict[str, Any] = await resp.json()
                return result

    run_doc = asyncio.run(run())
    if args.json:
        print(json.dumps(run_doc, indent=2))
    else:
        _print_run(run_doc)
    return 0


def _show(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT) as s:
            base = args.controller.rstrip("/")
            async with s.get(f"{base}/v1/placement") as resp:
                await raise_for_status(resp)
                doc: dict[str, Any] = await resp.json()
            async with s.get(f"{base}/v1/runs") as resp:
                await raise_for_status(resp)
                doc["runs"] = (await resp.json())["runs"]
            return doc

    doc = asyncio.run(run())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    if doc["placement"] is None:
        print("no placement computed yet: run `cachenet placement recompute`")
        return 0
    for server, models in doc["placement"]["models"].items():
        print(f"{server:12} {len(models)} models: {', '.join(models) or '-'}")
    for r in doc["runs"]:
        _print_run(r)
    return 0


def _print_run(r: dict[str, Any]) -> None:
    print(
        f"run {r['run_id']} ({r['solver']}): expected hit ratio {r['hit_ratio']:.3f}, "
        f"bytes to move {format_bytes(r['bytes_moved'])}, solved in {r['runtime_s']:.3f} s"
    )
    for server, n in sorted(r["nodes"].items()):
        state = "pushed" if n.get("pushed") else f"NOT pushed ({n.get('error', '')})"
        print(
            f"  {server:12} {n['blocks']} blocks, {format_bytes(n['bytes'])}, "
            f"fetch {format_bytes(n.get('bytes_to_fetch', 0))}: {state}"
        )
