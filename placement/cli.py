"""Commands of the controller: `controller serve`, and `placement generate|solve|recompute|show`."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cachenet.server.options import add_tls_arguments
from cachenet.units import count
from placement.config import DEFAULT_CONTROLLER_PORT
from placement.errors import ScenarioInvalid

# The solvers (and scipy, networkx and aiohttp under them) load only when a command runs:
# tests/placement checks these names against SOLVERS.
SOLVER_NAMES = (
    "independent",
    "optimal",
    "trimcaching-gen",
    "trimcaching-gen-density",
    "trimcaching-gen-density-ls",
    "trimcaching-gen-ls",
    "trimcaching-ls",
    "trimcaching-spec",
    "trimcaching-spec-ls",
)

__all__ = ("SOLVER_NAMES", "add_placement_commands", "register")

_FLAGS = {"epsilon": "--epsilon", "time_limit_s": "--time-limit"}
_CONTROLLER_HELP = (
    "controller URL (default: the local cluster's, from $CACHENET_CONTROLLER or DATA/cluster.json "
    f"that `cachenet up` writes, else http://127.0.0.1:{DEFAULT_CONTROLLER_PORT})"
)


def register(subparsers: Any) -> None:
    """Add the `placement` command group to the top-level `cachenet` parser."""
    group = subparsers.add_parser(
        "placement",
        help="plan which blocks each edge server holds (TrimCaching and baselines)",
        description="Generate placement scenarios and solve them with TrimCaching or a baseline.",
    )
    commands = group.add_subparsers(dest="placement_command", metavar="SUBCOMMAND", required=True)
    add_placement_commands(commands)
    _add_service_commands(commands)
    _add_controller_command(subparsers)


def add_placement_commands(commands: Any) -> None:
    """Add `generate` and `solve` to the `placement` group's subparsers (more can follow)."""
    gen = commands.add_parser(
        "generate",
        help="write a synthetic scenario YAML",
        description="Write a synthetic scenario (topology, models, demand) as YAML.",
    )
    gen.add_argument("--servers", type=int, default=12, help="number of edge servers (default 12)")
    gen.add_argument("--users", type=int, default=40, help="number of users or cells (default 40)")
    gen.add_argument("--models", type=int, default=100, help="number of models/adapters (default 100)")
    gen.add_argument("--backbones", type=int, default=3, help="number of backbones (default 3)")
    gen.add_argument(
        "--family",
        choices=("lora", "cnn"),
        default="lora",
        help="GPT-2 backbones with LoRA adapters, or ResNet-style CNNs (default lora)",
    )
    gen.add_argument("--capacity", default="2GB", help="capacity per server, e.g. 2GB, 512MiB (default 2GB)")
    gen.add_argument("--zipf", type=float, default=0.8, help="Zipf exponent of popularity (default 0.8)")
    gen.add_argument("--area", type=float, default=1000.0, help="side of the square area in metres")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", required=True, type=Path, help="scenario YAML file to write")
    gen.set_defaults(func=_generate)
    sol = commands.add_parser(
        "solve",
        help="solve a scenario and print the placement as JSON",
        description="Solve a scenario's placement and print it with its hit ratio.",
    )
    sol.add_argument("--scenario", required=True, type=Path, help="scenario YAML file")
    sol.add_argument("--solver", required=True, choices=SOLVER_NAMES, help="placement solver")
    sol.add_argument("--capacity", default=None, help="override every server's capacity, e.g. 3GB")
    sol.add_argument("--epsilon", type=float, default=None, help="trimcaching-spec rounding eps in (0, 1)")
    sol.add_argument("--time-limit", type=float, default=None, help="optimal: MILP time limit in seconds")
    sol.add_argument(
        "--json",
        action="store_true",
        help="print the placement (models and blocks per server, hit ratio, info) as JSON",
    )
    sol.set_defaults(func=_solve)


def _generate(args: argparse.Namespace) -> int:
    from placement.scenario import generate_scenario, write_scenario

    scenario = generate_scenario(
        servers=args.servers, users=args.users, models=args.models, backbones=args.backbones,
        family=args.family, capacity_bytes=_parse_size(args.capacity),
        zipf_exponent=args.zipf, area_m=args.area, seed=args.seed,
    )  # fmt: skip
    write_scenario(scenario, args.out)
    summary = {
        "out": str(args.out),
        "servers": args.servers,
        "users": args.users,
        "models": args.models,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _solve(args: argparse.Namespace) -> int:
    from placement.problem import check_feasible, storage_used
    from placement.scenario import read_scenario
    from placement.solve import solve, solver_options

    scenario = read_scenario(args.scenario)
    capacity = None if args.capacity is None else _parse_size(args.capacity)
    problem = scenario.to_problem(capacity_bytes=capacity)
    accepted = solver_options(args.solver)
    wanted = {"epsilon": args.epsilon, "time_limit_s": args.time_limit}
    for name, value in wanted.items():
        if value is not None and name not in accepted:
            flag = _FLAGS[name]
            raise ScenarioInvalid(f"solver {args.solver!r} does not take {flag}", field=flag)
    placement = solve(problem, solver=args.solver, **{k: v for k, v in wanted.items() if k in accepted})
    check_feasible(problem, placement)
    out = placement.to_dict()
    out["storage_used"] = storage_used(problem, placement)
    out["problem"] = problem.describe()
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        return 0
    lines = [f"solver {placement.solver}: hit ratio {placement.hit_ratio:.4f} in {placement.runtime_s:.3f} s"]
    for n, server in enumerate(problem.servers):
        used = out["storage_used"][server]
        lines.append(
            f"  {server}: {count(len(placement.models[server]), 'model')}, {used} of "
            f"{problem.capacities[n]} bytes: {', '.join(placement.models[server]) or '-'}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _add_controller_command(sub: Any) -> None:
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
    serve.add_argument("--solver", help="solver for periodic runs (default trimcaching-ls)")
    serve.add_argument(
        "--no-relay",
        dest="relay_delivery",
        action="store_false",
        default=None,
        help="do not send nodes the relay schedule (each fetches from peers, else the origin)",
    )
    serve.add_argument(
        "--no-pace",
        dest="pace_links",
        action="store_false",
        default=None,
        help="nodes do not pace fetches at the topology's link rates (the links shape traffic themselves)",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_CONTROLLER_PORT})")
    add_tls_arguments(serve)
    serve.set_defaults(func=_serve)


def _add_service_commands(commands: Any) -> None:
    """`placement recompute` and `placement show` (they call a running controller)."""
    rec = commands.add_parser("recompute", help="ask the controller to recompute the placement now")
    rec.add_argument("--controller", help=_CONTROLLER_HELP)
    rec.add_argument(
        "--solver",
        help="trimcaching-ls (default: greedy + local search), trimcaching-gen, trimcaching-gen-density, "
        "trimcaching-spec, their -ls variants, independent, optimal",
    )
    rec.add_argument("--token", help="operator token (default $CACHENET_TOKEN, else DATA/token of the local cluster)")
    rec.add_argument("--json", action="store_true", help="print the run as JSON")
    rec.set_defaults(func=_recompute)
    show = commands.add_parser("show", help="show the current placement and recent runs")
    show.add_argument("--controller", help=_CONTROLLER_HELP)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)


def _serve(args: argparse.Namespace) -> int:
    from cachenet.config import load_settings
    from cachenet.server.serve import run_app, tls_context
    from placement.app import create_app
    from placement.config import ControllerSettings

    keys = (
        "topology",
        "origin_url",
        "data_dir",
        "token",
        "interval_s",
        "solver",
        "host",
        "port",
        "relay_delivery",
        "pace_links",
    )
    overrides: dict[str, Any] = {k: getattr(args, k) for k in keys}
    overrides["nodes"] = tuple(args.nodes) if args.nodes else None
    settings = load_settings(ControllerSettings, args.config, os.environ, overrides)
    return run_app(
        create_app(settings), host=settings.host, port=settings.port, name="controller", ssl_context=tls_context(args)
    )


def _recompute(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp

    from cachenet.httpclient import DEFAULT_TIMEOUT, auth_headers, raise_for_status

    async def run() -> dict[str, Any]:
        token = args.token
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
    import asyncio

    import aiohttp

    from cachenet.httpclient import DEFAULT_TIMEOUT, raise_for_status

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
        print(f"{server:12} {count(len(models), 'model')}: {', '.join(models) or '-'}")
    for r in doc["runs"]:
        _print_run(r)
    return 0


def _print_run(r: dict[str, Any]) -> None:
    from cachenet.units import format_bytes

    print(
        f"run {r['run_id']} ({r['solver']}): expected hit ratio {r['hit_ratio']:.3f}, "
        f"bytes to move {format_bytes(r['bytes_moved'])}, solved in {r['runtime_s']:.3f} s"
    )
    for server, n in sorted(r["nodes"].items()):
        state = "pushed" if n.get("pushed") else f"NOT pushed ({n.get('error', '')})"
        print(
            f"  {server:12} {count(n['blocks'], 'block')}, {format_bytes(n['bytes'])}, "
            f"fetch {format_bytes(n.get('bytes_to_fetch', 0))}: {state}"
        )


def _parse_size(value: str) -> int:
    from placement.topology import parse_size

    return parse_size(value, field_name="--capacity")
