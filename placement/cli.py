"""The `cachenet placement ...` commands: generate synthetic scenarios and solve placements."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from placement.errors import ScenarioInvalid
from placement.servicecli import add_controller_command, add_service_commands
from placement.topology import parse_size

# The solvers (and scipy under them) load only when a command runs: every `cachenet`
# invocation builds this parser. tests/placement checks these names against SOLVERS.
SOLVER_NAMES = ("independent", "optimal", "trimcaching-gen", "trimcaching-gen-density", "trimcaching-spec")

__all__ = ("SOLVER_NAMES", "add_placement_commands", "register")

_FLAGS = {"epsilon": "--epsilon", "time_limit_s": "--time-limit"}


def register(subparsers: Any) -> None:
    """Add the `placement` command group to the top-level `cachenet` parser."""
    group = subparsers.add_parser(
        "placement",
        help="plan which blocks each edge server holds (TrimCaching and baselines)",
        description="Generate placement scenarios and solve them with TrimCaching or a baseline.",
    )
    commands = group.add_subparsers(dest="placement_command", metavar="SUBCOMMAND", required=True)
    add_placement_commands(commands)
    add_service_commands(commands)
    add_controller_command(subparsers)


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
        family=args.family, capacity_bytes=parse_size(args.capacity, field_name="--capacity"),
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
    capacity = None if args.capacity is None else parse_size(args.capacity, field_name="--capacity")
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
            f"  {server}: {len(placement.models[server])} models, {used} of "
            f"{problem.capacities[n]} bytes: {', '.join(placement.models[server]) or '-'}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
