"""The `cachenet` command: one parser whose subcommands live in each package's `cli` module.

Only the modules that define the command being run are imported (`cachenet pull` never loads
the origin's SQL catalogue or the controller's solvers), so a command starts in a fraction
of a second; `cachenet --help` imports them all to list every command.
"""

import argparse
import errno
import importlib
import logging
import os
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


# Commands that call a running server: their --origin, --controller and --token default to
# the local cluster (`cachenet.localcluster`).
_CLIENT_COMMANDS: Final = frozenset({"publish", "models", "placement", "rag", "pull"})
# Exit status by kind of failure.
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2  # as argparse's usage errors
EXIT_NOT_FOUND: Final = 3
EXIT_REFUSED: Final = 4  # missing or wrong token, refused by a rule
EXIT_UNREACHABLE: Final = 5  # a server is not running or not answering
EXIT_INTEGRITY: Final = 6  # bytes that do not match their hashes, full store
EXIT_INTERRUPTED: Final = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status.

    Every failure ends here as one line on stderr naming what failed and what to do, with an
    exit status by kind (see EXIT_*); `--debug` (anywhere on the line) or CACHENET_DEBUG=1
    shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CACHENET_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(argv).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in _CLIENT_COMMANDS:
        _local_defaults(args)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("cachenet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the one error path of every command
        if debug:
            raise
        code, line = describe_failure(e, args)
        print(f"cachenet: error: {line}", file=sys.stderr)
        return code
    return status


def describe_failure(e: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, one line naming what failed and what to do) for an exception a command raised."""
    from cachenet.errors import (
        BadInput,
        CapacityExceeded,
        Forbidden,
        IntegrityError,
        NotFound,
        Unauthorized,
        UpstreamUnavailable,
    )
    from cachenet.localcluster import TOKEN_SOURCES

    if isinstance(e, Unauthorized):
        if getattr(args, "token", None):
            return EXIT_REFUSED, (
                "the server refused the operator token given: it is not that server's token; "
                "use the token the server was started with (`cachenet up` keeps it in DATA/token)"
            )
        return EXIT_REFUSED, f"this command needs the operator token and none was given: pass {TOKEN_SOURCES}"
    if isinstance(e, Forbidden):
        return EXIT_REFUSED, _one_line(e.message)
    if isinstance(e, NotFound):
        return EXIT_NOT_FOUND, f"{_one_line(e.message)} (`cachenet models list` lists what is published)"
    if isinstance(e, BadInput):
        return EXIT_BAD_INPUT, _one_line(e.message)
    if isinstance(e, IntegrityError | CapacityExceeded):
        return EXIT_INTEGRITY, _one_line(e.message)
    if isinstance(e, UpstreamUnavailable):
        return EXIT_UNREACHABLE, _one_line(e.message)
    if isinstance(e, CachenetError):
        return EXIT_FAILED, _one_line(e.message)
    unreachable = _unreachable(e)
    if unreachable is not None:
        return EXIT_UNREACHABLE, (
            f"cannot reach {unreachable}: is the server running? Start the local cluster with `cachenet up`, "
            "or pass the server's URL (--origin, --controller, --source)"
        )
    if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
        return EXIT_BAD_INPUT, f"{_one_line(str(e))}: another server listens there; stop it or choose another --port"
    if isinstance(e, OSError):
        return EXIT_FAILED, _one_line(str(e))
    return EXIT_FAILED, f"unexpected {type(e).__name__}: {_one_line(str(e))} (run with --debug for the traceback)"


def _unreachable(e: BaseException) -> str | None:
    """What could not be reached when `e` is a connection failure (refused, timed out), else None."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return None
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        reason = os.strerror(err.errno).lower() if err.errno else _one_line(str(err))
        return f"{e.host}:{e.port} ({reason})"
    if isinstance(e, aiohttp.ServerTimeoutError | TimeoutError):
        return "the server (it did not answer in time)"
    if isinstance(e, aiohttp.ClientConnectionError | ConnectionError):
        return f"the server ({_one_line(str(e)) or type(e).__name__})"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _local_defaults(args: argparse.Namespace) -> None:
    """Point a client command at the local cluster unless its flags name a server or a folder."""
    from cachenet.localcluster import cluster_url, operator_token

    if hasattr(args, "token"):
        args.token = operator_token(args.token)
    if hasattr(args, "controller"):
        args.controller = cluster_url("controller", args.controller)
    if hasattr(args, "origin") and not getattr(args, "data", None):
        # publish and ingest must name their target; they take the cluster's origin only when one is known
        needs_target = args.command in ("publish", "rag")
        args.origin = cluster_url("origin", args.origin, fallback=not needs_target)


if __name__ == "__main__":
    sys.exit(main())
