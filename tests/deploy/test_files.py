"""Every file under deploy/ loads with the code that reads it, so no broken file ships."""

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Final

import pytest
import yaml

from cachenet.config import ENV_PREFIX, load_settings
from cachenet.edge.config import EdgeSettings
from placement.config import ControllerSettings
from placement.topology import load_topology, parse_topology
from registry.config import OriginSettings
from tests.deploy.servecli import DEPLOY_DIR, read_env_file

ENV_SETTINGS: Final = {
    "origin": OriginSettings,
    "edge": EdgeSettings,
    "controller": ControllerSettings,
}
FILES: Final = sorted(p for p in DEPLOY_DIR.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(DEPLOY_DIR)) for p in FILES])
def test_deploy_file_loads(path: Path) -> None:
    folder = path.relative_to(DEPLOY_DIR).parts[0]
    if folder == "topologies":
        assert load_topology(path).servers
    elif folder == "k8s":
        _check_k8s(path)
    elif path.suffix == ".env":
        _check_env_file(path)
    elif path.suffix in (".service", ".sysusers"):
        pass  # tests/deploy/test_systemd.py parses and checks these in depth
    elif path.suffix in (".yaml", ".yml"):
        list(yaml.safe_load_all(path.read_text()))
    elif path.suffix == ".toml":
        tomllib.loads(path.read_text())
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix != ".md":
        pytest.fail(f"no loader for {path.relative_to(DEPLOY_DIR)}: teach tests/deploy/test_files.py it")


def _check_k8s(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no documents"
    for doc in docs:
        assert isinstance(doc, dict) and {"apiVersion", "kind"} <= doc.keys(), path.name
        if doc["kind"] == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                if key.startswith("topology"):
                    assert parse_topology(yaml.safe_load(text)).servers


def _check_env_file(path: Path) -> None:
    role = path.stem.split("-", 1)[0]
    settings_cls = ENV_SETTINGS[role]
    env = read_env_file(path)
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(env) - fields)
    assert not unknown, f"{path.name}: {unknown} are not settings of {settings_cls.__name__}"
    load_settings(settings_cls, None, env)  # converts and validates every value
