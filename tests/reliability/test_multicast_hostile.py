"""Classes 2 and 4 of issue 14, against a real edge node sending to real multicast groups on loopback.

Class 2: CPU work on the event loop driven by request size. A NACK's ranges were expanded
piece by piece on the loop (one request froze a node for a minute); a join's block list
had no bound. Class 4: amplification. Two small unauthenticated joins made a node send a
whole model by multicast to nobody; joins had no limit per client.
"""

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.multicast.conftest import loopback_multicast  # noqa: F401 - the session fixture
from tests.reliability.test_slow_readers import BLOCK_BYTES, publish_big_model

pytestmark = pytest.mark.usefixtures("loopback_multicast")
SLOW_RATE: Final = 2e6  # bytes/s: a 4 MiB block takes two seconds


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def _post(s: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    data = io.BytesIO(json.dumps(body).encode())  # a large body: streamed, not one write
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def _join(s: aiohttp.ClientSession, edge: TestServer, blocks: list[str]) -> tuple[int, Any]:
    return await _post(s, f"{_url(edge)}/v1/multicast/join", {"model": "hostile/big", "blocks": blocks})


@pytest.mark.timeout(90)
async def test_a_huge_nack_or_join_is_refused_without_freezing_the_node(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    manifest = await publish_big_model(origin_server, tmp_path, blocks=2)
    blocks = [r.block_id for r in manifest.files[0].blocks]
    edge = await edge_factory(
        origin=origin_server,
        capacity_bytes=1 << 30,
        multicast_window_s=0.05,
        multicast_rate=SLOW_RATE,
        multicast_piece_bytes=512,  # 8192 pieces per block
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        first, _second = await asyncio.gather(_join(s, edge, blocks), _join(s, edge, blocks))
        status, answer = first
        assert status == 200, answer
        session = answer["session"]["session"]
        # 60,000 ranges each naming every piece of a block: half a billion pieces if expanded.
        nack = {"member": answer["member"], "round": 1, "missing": [[0, 0, 8192]] * 60_000}
        t0 = time.monotonic()
        status, doc = await _post(s, f"{_url(edge)}/v1/multicast/sessions/{session}/nack", nack)
        assert status in (413, 422), doc
        assert time.monotonic() - t0 < 5.0
        status, doc = await _join(s, edge, blocks * 40_000)
        assert status in (413, 422), doc
        assert time.monotonic() - t0 < 10.0
        async with s.get(f"{_url(edge)}/healthz") as resp:
            assert resp.status == 200


@pytest.mark.timeout(90)
async def test_multicast_to_nobody_stops_and_joins_are_limited_per_client(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    manifest = await publish_big_model(origin_server, tmp_path, blocks=2)
    blocks = [r.block_id for r in manifest.files[0].blocks]
    edge = await edge_factory(
        origin=origin_server,
        capacity_bytes=1 << 30,
        multicast_window_s=0.05,
        multicast_rate=SLOW_RATE,
        multicast_member_lease_s=0.5,
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        # Two joins that never listen nor poll their session.
        (st1, a1), (st2, a2) = await asyncio.gather(_join(s, edge, blocks), _join(s, edge, blocks))
        assert st1 == st2 == 200
        session = a1["session"]["session"]
        await asyncio.sleep(3.0)  # the whole model would take over four seconds
        async with s.get(f"{_url(edge)}/v1/multicast/sessions/{session}") as resp:
            state = await resp.json()
        assert state["state"] == "abandoned", state
        assert state["sent_bytes"] < BLOCK_BYTES, state  # stopped within the first block
        # A storm of joins from one address: most are refused with 429 and Retry-After.
        answers = await asyncio.gather(*(_join(s, edge, blocks[:1]) for _ in range(40)))
        refused = [doc for status, doc in answers if status == 429]
        assert len(refused) >= 20, [status for status, _ in answers]
        async with s.post(f"{_url(edge)}/v1/multicast/join", json={"model": "hostile/big", "blocks": blocks}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
