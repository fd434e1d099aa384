"""The upstream fetcher alone, against a real origin: single flight, verification, tracked tasks."""

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cachenet.blockid import digest_of
from cachenet.edge.admission import Admission
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.upstream import UpstreamFetcher
from cachenet.errors import BlockNotFound
from cachenet.protocol.headers import BLAKE3_HEADER
from tests.conftest import OPERATOR_TOKEN


async def _upload(origin: TestServer, data: bytes) -> str:
    digest = digest_of(data)
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}", BLAKE3_HEADER: digest.blake3}
    async with (
        aiohttp.ClientSession() as session,
        session.put(origin.make_url(f"/v1/blocks/{digest.block_id}"), data=data, headers=headers) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
    return digest.block_id


def _fetcher(tmp_path: Path, origin: TestServer) -> UpstreamFetcher:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        capacity_bytes=1 << 20,
        policy="lru",
        fsync=False,
        origin_url=str(origin.make_url("")).rstrip("/"),
    )
    metrics = EdgeMetrics()
    return UpstreamFetcher(settings, Admission(settings, metrics, clock=lambda: 0.0), metrics)


async def test_concurrent_requests_share_one_verified_transfer(tmp_path: Path, origin_server: TestServer) -> None:
    data = b"block bytes " * 1000
    block_id = await _upload(origin_server, data)
    fetcher = _fetcher(tmp_path, origin_server)
    flights = [fetcher.flight(block_id, blake3=None, model="m") for _ in range(5)]
    assert all(f is flights[0] for f in flights)
    path = await flights[0].wait()
    assert path.read_bytes() == data
    assert fetcher.admission.store.has(block_id) and block_id in fetcher.admission.policy
    assert fetcher.metrics.singleflight_merged._value.get() == 4
    assert not fetcher.flights
    await fetcher.close()


async def test_a_block_nobody_holds_is_not_found(tmp_path: Path, origin_server: TestServer) -> None:
    fetcher = _fetcher(tmp_path, origin_server)
    with pytest.raises(BlockNotFound):
        await fetcher.flight("ab" * 16, blake3=None, model=None).wait()
    assert len(fetcher.admission.store) == 0
    await fetcher.close()


async def test_close_cancels_transfers_under_way(tmp_path: Path, origin_server: TestServer) -> None:
    # An origin that never answers stands for a stalled upstream: the transfer is tracked and
    # cancelled at close, and its waiter hears of it.
    never = asyncio.Event()

    async def stall(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    app = aiohttp.web.Application()
    app.router.add_get("/v1/blocks/{block_id}", stall)
    server = TestServer(app)
    await server.start_server()
    try:
        fetcher = _fetcher(tmp_path, server)
        flight = fetcher.flight("cd" * 16, blake3=None, model=None)
        await asyncio.sleep(0.1)
        await asyncio.wait_for(fetcher.close(), timeout=5)
        with pytest.raises(Exception, match="cd"):
            await asyncio.wait_for(flight.wait(), timeout=5)
    finally:
        await server.close()
