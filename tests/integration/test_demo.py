"""The README's first command, end to end: `cachenet up --demo` starts the cluster, runs the demo, stops."""

import json
import subprocess
import sys
from pathlib import Path

from tests.clients.support import free_port_block


def test_up_demo_runs_end_to_end_and_leaves_no_process(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachenet",
            "up",
            "--data",
            str(data),
            "--base-port",
            str(free_port_block(8)),
            "--demo",
            "--exit-after-demo",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["device_pull_identical"] is True
    assert 0 < summary["hit_ratio"] <= 1 and summary["bytes_moved"] > 80_000_000
    assert summary["bytes_deduplicated"] > 4 * 80_000_000  # four LoRA variants did not copy the base
    # The demo topology spreads the models over the three nodes; the plan went along the relay tree,
    # so the origin sent the backbone once (issue #22).
    assert len(summary["blocks_per_node"]) == 3 and all(n > 0 for n in summary["blocks_per_node"].values())
    delivery = summary["delivery"]
    assert delivery["state"] == "complete", delivery
    origin_link = next(x for x in delivery["links"] if "origin" in (x["a"], x["b"]))
    assert summary["origin_bytes_served"] <= 1.1 * origin_link["planned"] < 1.1 * summary["bytes_moved"] / 2
    # Four devices pulling the four variants at once: the backbone went out once, by multicast.
    multicast = summary["multicast"]
    assert multicast["sessions"] == 1 and multicast["egress_by_kind"]["multicast"] > 80_000_000
    assert multicast["egress_bytes"] < 0.4 * multicast["unicast_only_bytes"]
    leftover = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert leftover == []
