"""Class 7 of issue 14: smaller defects hostile clients found.

- A non-ASCII Authorization header gave a 500 (it must be a 401).
- Every aborted download logged a traceback (now: once a minute per kind, at debug otherwise).
"""

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.reliability.test_slow_readers import publish_big_model


async def _raw_status(server: TestServer, head: bytes) -> int:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_a_non_ascii_authorization_header_is_a_401(
    origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    edge = await edge_factory(origin=origin_server)
    for server, path in ((origin_server, "/v1/blocks/missing"), (edge, "/v1/node/plan")):
        for value in ("Bearer t\xe9st".encode("latin-1"), "Bearer jeton-\u00e9t\u00e9".encode(), b"Bearer \xff\xfe"):
            method = b"POST" if server is origin_server else b"PUT"
            head = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
            head += b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            assert await _raw_status(server, head) == 401, (path, value)


async def test_aborted_downloads_log_no_traceback(
    origin_server: TestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = await publish_big_model(origin_server, tmp_path, blocks=1)
    block = manifest.files[0].blocks[0].block_id
    assert origin_server.port is not None
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", origin_server.port))
        sock.sendall(f"GET /v1/blocks/{block} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.to_thread(sock.recv, 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        sock.close()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    loud = [r for r in caplog.records if r.levelno >= logging.INFO and (r.exc_info or "Traceback" in r.getMessage())]
    assert not loud, [r.getMessage() for r in loud[:3]]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]
