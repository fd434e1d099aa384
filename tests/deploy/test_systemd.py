"""deploy/systemd/: every unit parses, runs a `cachenet ... serve` line the CLI accepts under its
EnvironmentFile, as the dedicated user, restarted on failure, hardened, writing only its data."""

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from cachenet.edge.config import EdgeSettings
from placement.config import ControllerSettings
from registry.config import OriginSettings
from tests.deploy.servecli import DEPLOY_DIR, read_env_file, serve_settings

SYSTEMD_DIR: Final = DEPLOY_DIR / "systemd"
UNITS: Final = {
    "cachenet-origin.service": ("origin", OriginSettings),
    "cachenet-edge@.service": ("edge", EdgeSettings),
    "cachenet-controller.service": ("controller", ControllerSettings),
}
INSTANCE: Final = "edge-1"  # what %i stands for in the checks (deploy/systemd/env/edge-edge-1.env)
USER: Final = "cachenet"
HARDENING: Final = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD_DIR / name).read_text(), source=name)
    return parser


def _specifiers(text: str) -> str:
    return text.replace("%i", INSTANCE).replace("%I", INSTANCE)


def test_every_unit_in_the_folder_is_checked() -> None:
    assert sorted(p.name for p in SYSTEMD_DIR.glob("*.service")) == sorted(UNITS)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_a_serve_command_the_cli_accepts(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    role, settings_cls = UNITS[name]
    unit = _unit(name)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = shlex.split(_specifiers(service["ExecStart"]))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "cachenet", argv[0]
    assert argv[1:3] == [role, "serve"]
    env: dict[str, str] = {}
    for path in _environment_files(name):
        example = SYSTEMD_DIR / "env" / Path(path).name
        assert example.exists(), f"{name} reads {path}: ship an example as {example.relative_to(DEPLOY_DIR)}"
        env.update(read_env_file(example))
    settings = serve_settings(monkeypatch, argv[1:], env)
    assert isinstance(settings, settings_cls)
    assert settings.token, "the operator token comes from the EnvironmentFile"
    data_dir = Path("/var/lib") / _specifiers(service["StateDirectory"])
    assert settings.data_dir == data_dir
    assert _specifiers(service["ReadWritePaths"]).split() == [str(data_dir)]
    if isinstance(settings, EdgeSettings):
        assert settings.node_id == INSTANCE


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_as_the_dedicated_user_restarts_and_is_hardened(name: str) -> None:
    unit = _unit(name)
    service = unit["Service"]
    assert (service["User"], service["Group"]) == (USER, USER)
    assert service["Restart"] == "on-failure"
    assert {k: service.get(k) for k in HARDENING} == HARDENING
    assert "network-online.target" in unit["Unit"]["After"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    sysusers = (SYSTEMD_DIR / "cachenet.sysusers").read_text()
    assert re.search(rf"^u {USER} ", sysusers, re.MULTILINE)


def test_systemd_accepts_every_directive(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    names = []
    for name in UNITS:
        instance = name.replace("@.", f"@{INSTANCE}.")
        shutil.copy(SYSTEMD_DIR / name, tmp_path / instance)
        names.append(instance)
    done = subprocess.run(
        [analyze, "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The binary and the EnvironmentFiles only exist once installed: ignore what says so.
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if re.search(r"unknown|invalid|failed to parse|ignoring", line, re.IGNORECASE)
    ]
    assert complaints == []


def _environment_files(name: str) -> list[str]:
    text = (SYSTEMD_DIR / name).read_text()
    return [_specifiers(p.lstrip("-")) for p in re.findall(r"^EnvironmentFile=(.+)$", text, re.MULTILINE)]
