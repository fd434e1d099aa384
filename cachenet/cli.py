"""The `cachenet` command: one parser whose subcommands live in each package's `cli` module.

Only the modules that define the command being run are imported (`cachenet pull` never loads
the origin's SQL catalogue or the controller's solvers), so a command starts in a fraction
of a second; `cachenet --help` imports them all to list every command.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Final

from cachenet.errors import CachenetError

__all__ = ("COMMANDS", "build_parser", "command_group", "main")
log = logging.getLogger(__name__)

# Command -> the modules that add it (each defines `register(subparsers)`, adding subcommands
# whose `func(args) -> int` runs them). `rag` has actions on both sides: ingest is an origin
# job, query a device's.
COMMANDS: Final[dict[str, tuple[str, ...]]] = {
    "origin": ("registry.cli",),
    "publish": ("registry.cli",),
    "models": ("registry.cli",),
    "rag": ("registry.cli", "clients.cli"),
    "edge": ("cachenet.edge.cli",),
    "controller": ("placement.cli",),
    "placement": ("placement.cli",),
    "pull": ("clients.cli",),
    "up": ("cluster.cli",),
}
_GROUPS: Final[dict[int, "argparse._SubParsersAction[argparse.ArgumentParser]"]] = {}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with the subcommands `argv` needs (all of them without a known command)."""
    parser = argparse.ArgumentParser(
        prog="cachenet",
        description="Edge model caching and delivery: publish models as content-addressed "
        "blocks, run origin / edge / controller servers, pull models onto devices.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = next((a for a in argv or () if not a.startswith("-")), None)
    wanted = COMMANDS.get(command or "")
    modules = wanted if wanted is not None else tuple(dict.fromkeys(m for ms in COMMANDS.values() for m in ms))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def command_group(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, *, help: str
) -> "argparse._SubParsersAction[argparse.ArgumentParser]":
    """The actions of command `name` (e.g. `rag`), created by the first package that adds one."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
        _GROUPS[id(parser)] = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
    return _GROUPS[id(parser)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.func(args)
    except CachenetError as e:
        print(f"cachenet: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cachenet: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
