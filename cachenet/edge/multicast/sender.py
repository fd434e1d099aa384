"""Sending one multicast session: its blocks in order, cut into datagrams, paced; then repair passes.

The session's own rate (its slowest member's) and the node's egress limit both pace
it; a session whose members all left stops at the next burst.
"""

import asyncio
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Final

from cachenet.edge.cache import EdgeCache
from cachenet.edge.metrics import EdgeMetrics
from cachenet.manifest import BlockRef
from cachenet.multicast.wire import encode_end, encode_piece
from cachenet.server.deviceapi import BlockHandle, LocalBlock

__all__ = ("SessionSender",)
log = logging.getLogger(__name__)

_READ_BYTES: Final = 1024 * 1024
# Datagrams go out in bursts of about this many bytes between two waits on the pacers.
_BURST_BYTES: Final = 64 * 1024
_END_REPEATS: Final = 3

Pacer = Callable[[int], Awaitable[None]]


class SessionSender:
    """Sends `blocks` to `(group, port)`; progress is readable while it runs."""

    def __init__(
        self,
        *,
        session: bytes,
        blocks: Sequence[BlockRef],
        model: str | None,
        sock: socket.socket,
        address: tuple[str, int],
        piece_bytes: int,
        pacers: Sequence[Pacer],
        cache: EdgeCache,
        metrics: EdgeMetrics,
        drop_rate: float = 0.0,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.session, self.blocks, self.model = session, list(blocks), model
        self.sock, self.address, self.piece_bytes = sock, address, piece_bytes
        self.pacers, self.cache, self.metrics = list(pacers), cache, metrics
        self.drop_rate = drop_rate
        self._drop = random.Random(int.from_bytes(session, "big"))
        self.still_wanted = still_wanted
        # Reads and bursts hold whole pieces, so every piece starts at a multiple of piece_bytes.
        self._burst = max(1, _BURST_BYTES // piece_bytes) * piece_bytes
        self._read_bytes = max(1, _READ_BYTES // piece_bytes) * piece_bytes
        self.cursor = 0
        self.sent_bytes = 0
        self.dropped_bytes = 0

    async def run(self) -> bool:
        """The main pass: every block in order (END is the caller's); False when stopped because nobody was left."""
        for seq, ref in enumerate(self.blocks):
            self.cursor = seq
            if not await self._send_ranges(seq, ref, [(0, ref.size)], "multicast"):
                return False
        self.cursor = len(self.blocks)
        return True

    async def resend(self, pieces: Mapping[int, Sequence[int]]) -> bool:
        """A repair pass: the pieces (block seq → piece indices) that members reported lost."""
        for seq in sorted(pieces):
            ref = self.blocks[seq]
            ranges = [(lo * self.piece_bytes, min(hi * self.piece_bytes, ref.size)) for lo, hi in _runs(pieces[seq])]
            if not await self._send_ranges(seq, ref, ranges, "multicast_repair"):
                return False
        return True

    async def end(self, *, repair_round: int, final: bool) -> None:
        """Send END a few times (it may be lost like any datagram)."""
        for _ in range(_END_REPEATS):
            await self._sendto(encode_end(self.session, len(self.blocks), repair_round=repair_round, final=final))
            await asyncio.sleep(0.01)

    async def _send_ranges(self, seq: int, ref: BlockRef, ranges: Sequence[tuple[int, int]], kind: str) -> bool:
        raw_id = bytes.fromhex(ref.block_id)
        handle = await self.cache.open_block(ref.block_id, blake3=ref.blake3, model=self.model)
        for start, end in ranges:
            async for offset, data in self._read(handle, start, end):
                view = memoryview(data)
                for lo in range(0, len(view), self._burst):
                    if not self.still_wanted():
                        return False
                    burst = view[lo : lo + self._burst]
                    for pace in self.pacers:
                        await pace(len(burst))
                    for p in range(0, len(burst), self.piece_bytes):
                        await self._send_piece(raw_id, seq, offset + lo + p, burst[p : p + self.piece_bytes], kind)
        return True

    async def _send_piece(self, raw_id: bytes, seq: int, offset: int, piece: memoryview, kind: str) -> None:
        n = len(piece)
        self.sent_bytes += n
        self.metrics.egress_bytes.labels(kind).inc(n)
        if self.drop_rate and self._drop.random() < self.drop_rate:
            self.dropped_bytes += n
            self.metrics.multicast_dropped_bytes.labels(kind).inc(n)
            return
        await self._sendto(encode_piece(self.session, raw_id, seq, offset, piece))
        self.metrics.multicast_datagrams.inc()

    async def _sendto(self, datagram: bytes) -> None:
        while True:
            try:
                self.sock.sendto(datagram, self.address)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the socket's send buffer is full: let it drain

    async def _read(self, handle: BlockHandle, start: int, end: int) -> AsyncIterator[tuple[int, bytes]]:
        """Bytes [start, end) of a block in piece-aligned chunks, from the store or as they arrive upstream."""
        if isinstance(handle, LocalBlock):
            fd = await asyncio.to_thread(os.open, handle.path, os.O_RDONLY)
            try:
                for offset in range(start, end, self._read_bytes):
                    want = min(self._read_bytes, end - offset)
                    data = await asyncio.to_thread(os.pread, fd, want, offset)
                    if len(data) != want:
                        raise OSError(f"{handle.path} ended early on disk")
                    yield offset, data
            finally:
                os.close(fd)
            return
        pending, position = bytearray(), start
        async for chunk in handle.iter_range(start, end):
            pending += chunk
            whole = len(pending) - len(pending) % self.piece_bytes
            if whole >= self._read_bytes:
                yield position, bytes(pending[:whole])
                del pending[:whole]
                position += whole
        if pending:
            yield position, bytes(pending)


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted piece indices as runs [lo, hi)."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
