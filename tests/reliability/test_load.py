"""Many concurrent device connections against one edge node: no errors, bounded latency and memory.

The short variant of `bench.reliability_load` (100 connections for 5 s instead of 500 for 60 s):
a mix of held blocks, held files and misses the node fetches from the origin.
"""

from pathlib import Path
from typing import Final

import pytest
from aiohttp.test_utils import TestServer

from bench.reliability_crash import write_random_model
from bench.reliability_load import run_load
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

CONNECTIONS: Final = 100
DURATION_S: Final = 5.0


@pytest.mark.timeout(180)
def test_an_edge_node_serves_100_concurrent_devices_without_errors_or_memory_growth(
    tmp_path: Path,
) -> None:
    result = run_load(
        tmp_path,
        connections=CONNECTIONS,
        duration_s=DURATION_S,
        seed=5,
        cold_files=20,
        cold_blocks=300,
    )
    figures = result.summary()
    assert figures["errors"] == 0, figures["error_examples"]
    assert figures["requests"] >= 200, figures
    assert all(figures["by_kind"][k] > 0 for k in ("hot_block", "hot_file", "cold_block", "cold_file")), figures
    assert result.edge_block_requests.get("miss", 0) > 0, figures  # misses went to the origin
    assert figures["p99_ms"] < 10_000, figures
    # Memory: bounded, and no growth with the request count between 25 % and 100 % of the run.
    assert figures["peak_rss_mib"] < 512, figures
    assert figures["rss_growth_25_to_100pct_mib"] < max(32.0, 0.25 * figures["rss_at_25pct_mib"]), figures


async def test_regression_a_manifest_bigger_than_one_read_is_not_truncated(
    origin_server: TestServer, tmp_path: Path
) -> None:
    """The origin read one chunk of a JSON body: a manifest of thousands of blocks was refused."""
    folder = write_random_model(tmp_path / "many", seed=3, tensors=3000, max_elems=300)
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    try:
        report = await publish_path(folder, name="load/many-blocks", target=target, progress=False)
    finally:
        await target.close()
    assert report.blocks > 3000
