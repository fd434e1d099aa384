"""Class 8 of issue 14: readiness reflects the serving path, not just a live process.

/healthz kept answering 200 while no block could be served. /readyz reads a small held
block through the server's own serving path with a deadline: here every worker thread of
the loop's pool is held (as slow readers held them before the fix), so the node cannot
serve a block; /readyz says 503 within its deadline while /healthz still says 200, and
says 200 again once the threads are free.
"""

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

READY_DEADLINE_S = 2.0  # cachenet.server.readiness.READY_DEADLINE_S


async def _get(url: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s, s.get(url) as resp:
        return resp.status, await resp.json(), time.monotonic() - t0


@pytest.mark.timeout(120)
async def test_readyz_fails_while_blocks_cannot_be_served_and_healthz_does_not(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(64 * 1024))
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    try:
        await publish_path(folder, name="hostile/small", target=target, progress=False)
    finally:
        await target.close()
    edge = await edge_factory(origin=origin_server)
    edge_url = str(edge.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as s, s.get(f"{edge_url}/hostile/small/resolve/main/weights.bin") as resp:
        assert resp.status == 200
        await resp.read()  # the edge now holds the block
    for server in (origin_server, edge):
        url = str(server.make_url("")).rstrip("/")
        status, doc, _ = await _get(f"{url}/readyz")
        assert status == 200 and doc["status"] == "ready", doc
        # Hold every thread of the loop's default pool: small blocks are read through it.
        release = threading.Event()
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(1)
        loop.set_default_executor(executor)
        blocker = loop.run_in_executor(None, release.wait)
        try:
            await asyncio.sleep(1.2)  # the last answer is no longer reused
            status, doc, elapsed = await _get(f"{url}/readyz")
            assert status == 503 and doc["status"] == "not ready", doc
            assert elapsed < READY_DEADLINE_S + 2.0
            status, _doc, _ = await _get(f"{url}/healthz")
            assert status == 200  # the process lives: liveness must not restart it
        finally:
            release.set()
            await blocker
        await asyncio.sleep(1.2)
        status, doc, _ = await _get(f"{url}/readyz")
        assert status == 200, doc
