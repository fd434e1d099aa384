"""Helpers of the deploy/ tests: run a `cachenet ... serve` line up to its settings; env files."""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import pytest

from cachenet.cli import build_parser
from cachenet.edge.config import EdgeSettings
from placement.config import ControllerSettings
from registry.config import OriginSettings

__all__ = ("DEPLOY_DIR", "ServerSettings", "read_env_file", "serve_settings")

DEPLOY_DIR: Final = Path(__file__).resolve().parents[2] / "deploy"
ServerSettings = OriginSettings | EdgeSettings | ControllerSettings


def read_env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile: `KEY=VALUE` lines, `#` comments, optional quotes."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip().isidentifier(), f"{path}:{n}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def serve_settings(monkeypatch: pytest.MonkeyPatch, argv: Sequence[str], env: Mapping[str, str]) -> ServerSettings:
    """Parse `argv` with the real CLI under `env` and return the settings it would serve with.

    The servers' `create_app` and `run_app` are replaced, so nothing listens or touches disk;
    everything before them (flags, `CACHENET_*` variables, settings validation) is real.
    """
    import cachenet.edge.app
    import cachenet.server.serve
    import placement.app
    import registry.app

    built: list[ServerSettings] = []

    def fake_create_app(settings: ServerSettings) -> ServerSettings:
        built.append(settings)
        return settings

    for module in (registry.app, cachenet.edge.app, placement.app):
        monkeypatch.setattr(module, "create_app", fake_create_app)
    monkeypatch.setattr(cachenet.server.serve, "run_app", lambda app, **_kw: 0)
    for name in list(os.environ):
        if name.startswith("CACHENET_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit:
        pytest.fail(f"the CLI refuses {' '.join(argv)!r} (see the captured stderr)")
    assert args.func(args) == 0
    assert len(built) == 1, "the command did not build a server"
    return built[0]
