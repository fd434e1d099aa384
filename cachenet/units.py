"""Parsing sizes ("4GiB", "512MB", "1e9") and rates ("100Mbit", "50MB") given by people."""

import re
from typing import Final

from cachenet.errors import BadInput

__all__ = ("count", "format_bytes", "parse_rate", "parse_size")

_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from `4GiB`, `512MB`, `100k` or a plain number; raises `BadInput`."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise BadInput(f"size must not be negative, got {text}")
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise BadInput(f"cannot read {text!r} as a size: use e.g. 4GiB, 512MB or 1000000")
    value = float(m.group(1)) * _UNITS[unit]
    if not value < 2**63:
        raise BadInput(f"size {text!r} is too large")
    return int(value)


def parse_rate(text: str | int | float) -> float:
    """Bytes per second from `100Mbit`, `50MB` (per second) or a plain number of bytes/s."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    raw = str(text).strip().lower().removesuffix("/s").removesuffix("ps")
    if raw.endswith("bit"):
        return parse_size(raw.removesuffix("bit") or "1") / 8
    return float(parse_size(raw))


def format_bytes(n: float) -> str:
    """`1.5 GiB`-style text for people."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n noun` with the noun in the plural unless n is 1 ("1 block", "3 blocks")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
