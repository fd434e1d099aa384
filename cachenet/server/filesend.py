"""Sending byte ranges of block files over an aiohttp response, zero-copy where possible.

Under uvloop aiohttp's `FileResponse` never uses sendfile (it reads and writes 256 KiB
chunks). Here the response headers are flushed, then `os.sendfile` runs in a worker
thread on the connection's socket (waiting with `poll` when the socket is full), so the
kernel copies file pages straight to the socket and the event loop stays free. TLS
connections, and responses that must be paced by an egress limit, take the chunked path.
"""

import asyncio
import logging
import os
import select
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ("CHUNK_BYTES", "send_file_range", "stream_chunks")
log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1024 * 1024
_POLL_TIMEOUT_MS: Final = 30_000
# Below this, a plain read+write costs less than a trip to a worker thread.
_SENDFILE_MIN_BYTES: Final = 256 * 1024

Pacer = Callable[[int], Awaitable[None]]


async def send_file_range(
    request: web.Request,
    resp: web.StreamResponse,
    path: Path,
    start: int,
    end: int,
    *,
    pacer: Pacer | None = None,
) -> None:
    """Write bytes [start, end) of `path` to a prepared response."""
    count = end - start
    if count <= 0:
        return
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    zero_copy = (
        pacer is None
        and sock is not None
        and transport is not None
        and transport.get_extra_info("sslcontext") is None
        and count >= _SENDFILE_MIN_BYTES
    )
    if zero_copy and transport is not None and sock is not None:
        writer = resp._payload_writer  # noqa: SLF001 - the only way to flush buffered headers
        if writer is not None:
            writer.send_headers()
        while transport.get_write_buffer_size() > 0:
            if transport.is_closing():
                raise ConnectionResetError("connection closed")
            await asyncio.sleep(0.0005)
        # The thread gets its own descriptor of the socket: if the connection is closed
        # under it, the loop's descriptor number may be reused at once by a new connection,
        # and writing to it would send this body to another client.
        # The thread owns the duplicate and closes it itself, also when this coroutine is
        # cancelled while the thread still runs.
        await asyncio.to_thread(_sendfile_blocking, os.dup(sock.fileno()), path, start, count)
        return
    await stream_chunks(resp, path, start, end, pacer=pacer)


async def stream_chunks(
    resp: web.StreamResponse, path: Path, start: int, end: int, *, pacer: Pacer | None = None
) -> None:
    """Write [start, end) of a file in chunks read off the event loop."""
    with open(path, "rb") as f:
        position = start
        while position < end:
            size = min(CHUNK_BYTES, end - position)
            chunk = await asyncio.to_thread(os.pread, f.fileno(), size, position)
            if not chunk:
                raise ConnectionError(f"{path} ended early")
            if pacer is not None:
                await pacer(len(chunk))
            await resp.write(chunk)
            position += len(chunk)


def _sendfile_blocking(sock_fd: int, path: Path, offset: int, count: int) -> None:
    """Send with `os.sendfile` on `sock_fd`, which this function owns and closes."""
    try:
        _sendfile_loop(sock_fd, path, offset, count)
    finally:
        os.close(sock_fd)


def _sendfile_loop(sock_fd: int, path: Path, offset: int, count: int) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    with open(path, "rb") as f:
        in_fd = f.fileno()
        while count > 0:
            try:
                sent = os.sendfile(sock_fd, in_fd, offset, count)
            except BlockingIOError:
                if not poller.poll(_POLL_TIMEOUT_MS):
                    raise TimeoutError("client stopped reading") from None
                continue
            if sent == 0:
                raise ConnectionError(f"{path} ended early")
            offset += sent
            count -= sent
