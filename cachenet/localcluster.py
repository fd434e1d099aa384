"""Where client commands find the local cluster that `cachenet up` runs, and its operator token.

`cachenet up --data DIR` writes `DIR/cluster.json` (the URL of every server) and `DIR/token`.
A client command finds them in `$CACHENET_CLUSTER` or, by default, `./cachenet-data` (what
`cachenet up` uses by default), unless flags or `CACHENET_ORIGIN` / `CACHENET_CONTROLLER` /
`CACHENET_TOKEN` say otherwise.
"""

import json
import os
from pathlib import Path
from typing import Any, Final

__all__ = (
    "CLUSTER_ENV",
    "CLUSTER_FILE",
    "DEFAULT_CLUSTER_DIR",
    "TOKEN_SOURCES",
    "cluster_dir",
    "cluster_url",
    "operator_token",
    "read_cluster",
    "write_cluster",
)

CLUSTER_ENV: Final = "CACHENET_CLUSTER"
CLUSTER_FILE: Final = "cluster.json"
DEFAULT_CLUSTER_DIR: Final = Path("cachenet-data")
# The servers' own default ports (registry.config, placement.config), when no cluster is known.
_FALLBACK_PORTS: Final = {"origin": 8700, "controller": 8790}
TOKEN_SOURCES: Final = "--token, the CACHENET_TOKEN environment variable, or DATA/token that `cachenet up` writes"


def cluster_dir() -> Path:
    """The data folder of the local cluster: `$CACHENET_CLUSTER`, else ./cachenet-data."""
    return Path(os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER_DIR)


def read_cluster(folder: Path | None = None) -> dict[str, Any] | None:
    """The running cluster's description (`cluster.json`), or None when there is none."""
    path = (folder or cluster_dir()) / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_cluster(folder: Path, doc: dict[str, Any]) -> Path:
    """Write `cluster.json` (replaced atomically) for client commands to find."""
    path = folder / CLUSTER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def cluster_url(role: str, given: str | None = None, *, fallback: bool = True) -> str | None:
    """The URL of `role` (origin, controller): the flag, `CACHENET_<ROLE>`, cluster.json, else the default port."""
    if given:
        return given.rstrip("/")
    env = os.environ.get(f"CACHENET_{role.upper()}")
    if env:
        return env.rstrip("/")
    doc = read_cluster()
    if doc is not None and isinstance(doc.get(role), str):
        return str(doc[role]).rstrip("/")
    if fallback and role in _FALLBACK_PORTS:
        return f"http://127.0.0.1:{_FALLBACK_PORTS[role]}"
    return None


def operator_token(given: str | None = None) -> str | None:
    """The operator token: `--token`, `$CACHENET_TOKEN`, else the local cluster's `token` file."""
    if given:
        return given
    env = os.environ.get("CACHENET_TOKEN")
    if env:
        return env
    try:
        return (cluster_dir() / "token").read_text().strip() or None
    except OSError:
        return None
