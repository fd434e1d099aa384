"""Class 1 of issue 14: slow readers must not starve a server (origin and edge).

A slow reader asks for a large block and then reads nothing (its receive buffer is tiny),
so the server's send of that body never finishes. Before the fix each such send held a
worker thread of the event loop's shared pool (CPUs + 4 threads): a handful of slow
readers stopped all serving of blocks and files, on the origin and on every edge node.
"""

import asyncio
import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import xxhash
from aiohttp.test_utils import TestServer

from cachenet.manifest import ModelManifest
from registry.app import create_app
from registry.config import OriginSettings
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

BLOCK_BYTES: Final = 4 * 1024 * 1024
SLOW_READERS: Final = 24  # well above the default thread pool (CPUs + 4)
NORMAL_DEADLINE_S: Final = 10.0


async def publish_big_model(origin: TestServer, tmp_path: Path, *, blocks: int = 3) -> ModelManifest:
    """A model of one random binary file cut into `blocks` blocks of BLOCK_BYTES."""
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(blocks * BLOCK_BYTES))
    url = str(origin.make_url("")).rstrip("/")
    target = HttpTarget(url, OPERATOR_TOKEN)
    try:
        await publish_path(folder, name="hostile/big", target=target, max_block_size=BLOCK_BYTES, progress=False)
    finally:
        await target.close()
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/models/hostile/big/revisions/main") as resp:
        return ModelManifest.from_bytes(await resp.read())


def open_slow_reader(port: int, path: str) -> socket.socket:
    """A connection that asks for `path` and then never reads (a receive buffer of 4 KiB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def assert_serves_while_slow_readers_hang(server: TestServer, manifest: ModelManifest) -> None:
    refs = manifest.files[0].blocks
    assert server.port is not None
    slow = [open_slow_reader(server.port, f"/v1/blocks/{refs[0].block_id}") for _ in range(SLOW_READERS)]
    try:
        await asyncio.sleep(1.0)  # every slow send has started and filled its socket
        url = str(server.make_url("")).rstrip("/")
        timeout = aiohttp.ClientTimeout(total=NORMAL_DEADLINE_S)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            for ref in refs[1:]:
                async with s.get(f"{url}/v1/blocks/{ref.block_id}") as resp:
                    assert resp.status == 200
                    assert xxhash.xxh3_128_hexdigest(await resp.read()) == ref.block_id
            path = f"/v1/models/hostile/big/revisions/main/files/{manifest.files[0].path}"
            async with s.get(url + path, headers={"Range": f"bytes=0-{BLOCK_BYTES // 2}"}) as resp:
                assert resp.status == 206
                assert len(await resp.read()) == BLOCK_BYTES // 2 + 1
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.timeout(120)
async def test_slow_readers_do_not_starve_the_origin(origin_server: TestServer, tmp_path: Path) -> None:
    manifest = await publish_big_model(origin_server, tmp_path)
    await assert_serves_while_slow_readers_hang(origin_server, manifest)


@pytest.mark.timeout(120)
async def test_slow_readers_do_not_starve_an_edge_node(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    manifest = await publish_big_model(origin_server, tmp_path)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    url = str(edge.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as s:
        for ref in manifest.files[0].blocks:  # warm: the node holds every block
            async with s.get(f"{url}/v1/blocks/{ref.block_id}") as resp:
                assert resp.status == 200
                await resp.read()
    await assert_serves_while_slow_readers_hang(edge, manifest)


@pytest.mark.timeout(120)
async def test_one_client_address_cannot_hold_more_than_its_share(
    origin_settings: OriginSettings, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    origin = await aiohttp_server(create_app(dataclasses.replace(origin_settings, max_requests_per_client=4)))
    manifest = await publish_big_model(origin, tmp_path, blocks=2)
    refs = manifest.files[0].blocks
    slow = [open_slow_reader(origin.port, f"/v1/blocks/{refs[0].block_id}") for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        url = str(origin.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/v1/blocks/{refs[1].block_id}") as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"]
            # Another address is served as usual.
            other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with (
                aiohttp.ClientSession(connector=other) as s2,
                s2.get(f"{url}/v1/blocks/{refs[1].block_id}") as r2,
            ):
                assert r2.status == 200
                assert xxhash.xxh3_128_hexdigest(await r2.read()) == refs[1].block_id
    finally:
        for sock in slow:
            sock.close()
    await asyncio.sleep(0.5)  # the slow requests end once their sockets close
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/blocks/{refs[1].block_id}") as resp:
        assert resp.status == 200
        await resp.read()
