"""Sending byte ranges of block files over an aiohttp response, zero-copy where possible.

Under uvloop aiohttp's `FileResponse` never uses sendfile (it reads and writes 256 KiB
chunks). Here the response headers are flushed, then `os.sendfile` copies file pages
straight to the connection's socket in bursts: a burst runs in a small pool of its own
and returns as soon as the socket is full (the socket is non-blocking), and the wait for
room happens on the event loop. So a slow reader costs a socket, never a thread: no
number of slow clients can exhaust a pool others need (issue 14). A send that makes no
progress for `SEND_STALL_TIMEOUT_S` is cut. TLS connections, and responses that must be
paced by an egress limit, take the chunked path, under the same stall timeout.
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ("CHUNK_BYTES", "SEND_STALL_TIMEOUT_S", "send_file_range", "stream_chunks", "write_or_cut")
log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1024 * 1024
# A client that takes no byte for this long is cut (a send timeout per connection).
SEND_STALL_TIMEOUT_S: Final = 30.0
# Bursts never wait for a client, only for the disk: a few threads are enough.
_BURST_THREADS: Final = 4
_BURST_MAX_BYTES: Final = 64 * 1024 * 1024
_burst_pool = ThreadPoolExecutor(_BURST_THREADS, thread_name_prefix="cachenet-sendfile")
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
        flush_deadline = asyncio.get_running_loop().time() + SEND_STALL_TIMEOUT_S
        while transport.get_write_buffer_size() > 0:
            if transport.is_closing():
                raise ConnectionResetError("connection closed")
            if asyncio.get_running_loop().time() > flush_deadline:
                raise TimeoutError(f"client took no byte for {SEND_STALL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.0005)
        await _send_zero_copy(sock.fileno(), path, start, count)
        return
    await stream_chunks(resp, path, start, end, pacer=pacer)


async def write_or_cut(resp: web.StreamResponse, chunk: bytes) -> None:
    """`resp.write(chunk)`, raising `TimeoutError` when the client takes nothing for `SEND_STALL_TIMEOUT_S`."""
    await asyncio.wait_for(resp.write(chunk), SEND_STALL_TIMEOUT_S)


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
            await write_or_cut(resp, chunk)
            position += len(chunk)


async def _send_zero_copy(sock_fd: int, path: Path, offset: int, count: int) -> None:
    # The bursts get their own descriptor of the socket: if the connection is closed under
    # a burst, the loop's descriptor number may be reused at once by a new connection, and
    # writing to it would send this body to another client. The descriptors are closed
    # when the last burst is over, also when this coroutine is cancelled during one.
    loop = asyncio.get_running_loop()
    out_fd = os.dup(sock_fd)
    try:
        in_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(out_fd)
        raise
    burst: Future[int] | None = None
    try:
        while count > 0:
            burst = _burst_pool.submit(_sendfile_burst, out_fd, in_fd, offset, min(count, _BURST_MAX_BYTES))
            sent = await asyncio.wrap_future(burst, loop=loop)
            offset += sent
            count -= sent
            if count > 0 and sent < _BURST_MAX_BYTES:
                await _until_writable(loop, out_fd)
    finally:
        if burst is None:
            _close_both(out_fd, in_fd)
        else:
            burst.add_done_callback(lambda _f: _close_both(out_fd, in_fd))


def _sendfile_burst(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """Send what the socket takes now; returns the bytes sent (fewer than `count` when it is full)."""
    sent_total = 0
    while sent_total < count:
        try:
            sent = os.sendfile(out_fd, in_fd, offset + sent_total, count - sent_total)
        except BlockingIOError:
            break
        except (BrokenPipeError, ConnectionError) as e:
            raise ConnectionResetError(f"client went away: {e}") from None
        if sent == 0:
            raise ConnectionError("block file ended early")
        sent_total += sent
    return sent_total


async def _until_writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, SEND_STALL_TIMEOUT_S)
    except TimeoutError:
        raise TimeoutError(f"client took no byte for {SEND_STALL_TIMEOUT_S:.0f} s") from None
    finally:
        loop.remove_writer(fd)


def _close_both(a: int, b: int) -> None:
    os.close(a)
    os.close(b)
