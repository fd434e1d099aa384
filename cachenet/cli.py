"""The `cachenet` command: one parser whose subcommands live in each package's `cli` module."""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Final

from cachenet.errors import CachenetError

__all__ = ("main",)
log = logging.getLogger(__name__)

# Each module defines `register(subparsers)`, adding subcommands whose `func(args) -> int`
# runs them. Imported lazily so the core never imports the other packages at module load.
COMMAND_MODULES: Final = (
    "registry.cli",
    "cachenet.edge.cli",
    "placement.cli",
    "clients.cli",
    "clients.ragcli",
    "cluster.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="cachenet",
        description="Edge model caching and delivery: publish models as content-addressed "
        "blocks, run origin / edge / controller servers, pull models onto devices.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that part is not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
