"""Shared bits of the placement benchmarks: machine description and JSON output."""

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Final

__all__ = ("RESULTS", "machine", "write_json")

RESULTS: Final = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count and memory of this machine."""
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json with the command, machine and timestamp added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python -m bench." + name + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
