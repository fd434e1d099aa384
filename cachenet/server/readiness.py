"""GET /readyz: whether the node can serve a block now, checked through the serving path itself.

/healthz says the process answers; it kept answering 200 while every worker was held and no
block could be served. /readyz reads one small held block from this very server (HTTP to its
own listening socket, `only-if-cached`, so no upstream is involved) and checks its bytes,
within a deadline. The answer is shared by concurrent probes and reused for a second, so
hammering /readyz costs at most one block read per second.
"""

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Final

import aiohttp
import xxhash
from aiohttp import web

from cachenet.blockstore import BlockStore
from cachenet.protocol.headers import ONLY_IF_CACHED_HEADER

__all__ = ("READY_DEADLINE_S", "ReadinessProbe")

READY_DEADLINE_S: Final = 2.0
_REUSE_S: Final = 1.0
_PROBE_MAX_BYTES: Final = 1024 * 1024  # the probe block is the smallest held, if this small


class ReadinessProbe:
    """The /readyz handler of a server whose blocks are in `store`."""

    def __init__(self, store: BlockStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._block: str | None = None
        self._last: tuple[float, int, dict[str, object]] | None = None
        self._running: asyncio.Task[tuple[int, dict[str, object]]] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        """GET /readyz: 200 when a held block was served whole and intact within the deadline, else 503."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < _REUSE_S:
            status, doc = self._last[1], self._last[2]
        else:
            if self._running is None or self._running.done():
                self._running = asyncio.create_task(self._probe(_own_url(request)))
            status, doc = await asyncio.shield(self._running)
            self._last = (self._clock(), status, doc)
        return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})

    async def _probe(self, base_url: str) -> tuple[int, dict[str, object]]:
        block = self._pick()
        if block is None:
            return 200, {"status": "ready", "probe": "no block held yet"}
        started = self._clock()
        timeout = aiohttp.ClientTimeout(total=READY_DEADLINE_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as s,
                s.get(f"{base_url}/v1/blocks/{block}", headers={ONLY_IF_CACHED_HEADER: "1"}, ssl=False) as resp,
            ):
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return 503, {"status": "not ready", "reason": f"reading block {block} failed: {e!r}"}
        elapsed = self._clock() - started
        if status != 200 or xxhash.xxh3_128_hexdigest(body) != block:
            self._block = None
            return 503, {"status": "not ready", "reason": f"block {block} answered {status}, {len(body)} bytes"}
        return 200, {"status": "ready", "probe": block, "elapsed_s": round(elapsed, 4)}

    def _pick(self) -> str | None:
        if self._block is not None and self.store.has(self._block):
            return self._block
        sizes = self.store.sizes()
        small = [(size, b) for b, size in sizes.items() if size <= _PROBE_MAX_BYTES]
        self._block = min(small)[1] if small else (min((s, b) for b, s in sizes.items())[1] if sizes else None)
        return self._block


def _own_url(request: web.Request) -> str:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    tls = transport is not None and isinstance(transport.get_extra_info("sslcontext"), ssl.SSLContext)
    if not sockname:
        return str(request.url.origin())
    host, port = str(sockname[0]), int(sockname[1])
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
