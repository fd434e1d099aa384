"""Class 3 of issue 14: per-client state a client creates is validated, capped and aged out.

The device's cell id (a free-form request header) became a key of the demand table as
sent: any length, any number of them, kept for a day. A flood of distinct long ids grew
the node's memory without limit and made /v1/node/demand hundreds of MB.
"""

import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cachenet.edge.demand import DemandStats
from cachenet.edge.keys import demand_key
from cachenet.protocol.headers import CELL_HEADER
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN


async def test_cell_ids_are_validated_and_the_demand_table_stays_small(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    try:
        await publish_path(folder, name="hostile/tiny", target=target, progress=False)
    finally:
        await target.close()
    edge = await edge_factory(origin=origin_server)
    url = str(edge.make_url("")).rstrip("/") + "/hostile/tiny/resolve/main/config.json"
    hostile = ["x" * 6000 + secrets.token_hex(8) for _ in range(50)]
    hostile += [f"cell {k}#{secrets.token_hex(4)}" for k in range(50)] + ["", "-starts-with-dash", "a/b"]
    async with aiohttp.ClientSession() as s:
        for cell in [*hostile, "cell-7", "cell-7", "north:3"]:
            async with s.get(url, headers={CELL_HEADER: cell}) as resp:
                assert resp.status == 200  # a bad cell never fails a download
                await resp.read()
        async with s.get(str(edge.make_url("/v1/node/demand"))) as resp:
            body = await resp.read()
            doc = await resp.json()
    valid = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")  # protocol.patterns.CELL_ID
    cells = {row["cell"] for row in doc["demand"]}
    assert cells == {None, "cell-7", "north:3"}, sorted(str(c)[:40] for c in cells)
    assert all(c is None or valid.match(c) for c in cells)
    assert len(body) < 4096
    assert len(edge.app[demand_key]) == 3


def test_the_demand_table_is_capped_and_ages_out() -> None:
    now = [0.0]
    stats = DemandStats(half_life_s=60.0, max_keys=100, clock=lambda: now[0])
    for k in range(10_000):
        stats.record("org/m", "r" * 40, cell=f"cell-{k}")
    assert len(stats) <= 101  # the rest were counted without a cell (one more key)
    assert sum(r.count for r in stats.snapshot()) == 10_000
    now[0] = 3600.0  # sixty half-lives later, old cells age out and new ones find room
    stats.record("org/m", "r" * 40, cell="fresh")
    assert "fresh" in {r.cell for r in stats.snapshot()}
    assert len(stats) <= 2
