"""The machine description and result writing shared by every benchmark."""

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ("machine_info", "write_result")

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS and Python of this machine."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` with the command, the machine and a timestamp."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": "python -m " + " ".join([f"bench.{name}", *sys.argv[1:]]),
        "machine": machine_info(),
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **result,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
