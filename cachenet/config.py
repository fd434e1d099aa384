"""Settings loading shared by every service: file < `CACHENET_*` environment < command-line flags."""

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cachenet.errors import BadInput

__all__ = ("ENV_PREFIX", "load_settings")

ENV_PREFIX = "CACHENET_"
S = TypeVar("S")


def load_settings(
    cls: type[S],
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Build a frozen settings dataclass from a TOML/YAML file, the environment and overrides.

    A field `data_dir` is read from the file key `data_dir`, the variable
    `CACHENET_DATA_DIR` and the override `data_dir`; `None` overrides are ignored.
    Raises `BadInput` naming the field when a value cannot be converted.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(values) - fields
    if unknown:
        raise BadInput(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
    for name in fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    for name, value in (overrides or {}).items():
        if value is not None and name in fields:
            values[name] = value
    converted = {name: _convert(name, value, hints[name]) for name, value in values.items()}
    return cls(**converted)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"cannot read settings file {path}: {e.strerror}") from None
    import yaml  # only a command given a settings file pays for it

    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise BadInput(f"settings file {path} is malformed: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"settings file {path} must hold a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def _convert(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value == "" and type(None) in args):
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(name, value, inner[0])
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if hint is Path:
            return Path(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()] if not value.startswith("[") else json.loads(value)
            return tuple(_convert(name, v, args[0]) for v in value)
    except (TypeError, ValueError):
        raise BadInput(f"setting {name}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value
