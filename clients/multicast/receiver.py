"""Receiving a multicast session's datagrams into partial blocks, on a thread of its own.

The thread reads the group's socket, drops datagrams of other sessions, damaged ones and
duplicates, and writes each piece at its offset into the block's `PieceWriter` (opened
when the block's first piece arrives, so only the blocks under way hold a file open). It tells
the event loop when a block has all its pieces, when the sender moved past a block (a
later block's datagram arrived: what is missing there is lost), and when the session
ended.
"""

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachenet.blockwriters import PieceWriter
from cachenet.manifest import BlockRef
from cachenet.multicast.wire import END, MAX_DATAGRAM_BYTES, BadDatagram, decode

__all__ = ("IncomingBlock", "SessionReceiver")
log = logging.getLogger(__name__)


@dataclass(slots=True)
class IncomingBlock:
    """A block being received: which of its pieces arrived."""

    ref: BlockRef
    seq: int
    piece_bytes: int
    writer: PieceWriter | None = None
    have: bytearray = field(init=False)
    missing: int = field(init=False)
    closed: bool = False
    lost_in_main_pass: int | None = None  # bytes missing when the main pass ended (reported by NACK)

    def __post_init__(self) -> None:
        pieces = -(-self.ref.size // self.piece_bytes)
        self.have = bytearray(pieces)
        self.missing = pieces

    def missing_runs(self) -> list[tuple[int, int]]:
        """Runs [first, end) of piece indices not received."""
        out: list[tuple[int, int]] = []
        for i, got in enumerate(self.have):
            if got:
                continue
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 1)
            else:
                out.append((i, i + 1))
        return out

    def holes(self) -> list[tuple[int, int]]:
        """Byte ranges [start, end) not received, adjacent pieces merged."""
        size, piece = self.ref.size, self.piece_bytes
        return [(lo * piece, min(hi * piece, size)) for lo, hi in self.missing_runs()]


# What the thread reports to the loop: ("complete", block), ("end", (flags, round)),
# ("socket", error): nothing more will arrive, ("error", error): a piece could not be stored.
Event = tuple[str, object]


class SessionReceiver:
    """Reads `sock` until stopped; `blocks` maps raw block ids (16 bytes) to blocks being received."""

    def __init__(
        self,
        sock: socket.socket,
        session: bytes,
        blocks: dict[bytes, IncomingBlock],
        *,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[str, object], None],
        open_writer: Callable[[BlockRef], PieceWriter],
    ) -> None:
        self.sock, self.session, self.blocks = sock, session, blocks
        self.open_writer = open_writer
        self.lock = threading.Lock()
        self._loop, self._on_event = loop, on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"multicast {session.hex()}", daemon=True)
        self.last_datagram_at = time.monotonic()

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    async def stop(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        self.sock.close()

    def close(self, block: IncomingBlock) -> None:
        """Take a block away from the thread (it will write no more pieces into it)."""
        with self.lock:
            block.closed = True

    def _emit(self, kind: str, value: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_event, kind, value)
        except RuntimeError:
            self._stop.set()  # the loop is closed: nobody is listening any more

    def _run(self) -> None:
        buf = bytearray(MAX_DATAGRAM_BYTES)
        view = memoryview(buf)
        while not self._stop.is_set():
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError as e:
                if not self._stop.is_set():
                    log.warning("multicast socket failed: %s", e)
                    self._emit("socket", e)
                return
            try:
                d = decode(view[:n])
            except BadDatagram:
                continue  # damaged or not ours: a lost piece, repaired like any other
            if d.session != self.session:
                continue
            self.last_datagram_at = time.monotonic()
            if d.kind == END:
                self._emit("end", (d.flags, d.offset))
                continue
            try:
                self._store(d.block_id, d.offset, d.payload)
            except Exception as e:  # noqa: BLE001 - a full disk must reach the loop, not kill the thread quietly
                self._emit("error", e)
                return

    def _store(self, block_id: bytes, offset: int, payload: memoryview) -> None:
        with self.lock:
            block = self.blocks.get(block_id)
            if block is None or block.closed:
                return
            index, rest = divmod(offset, block.piece_bytes)
            if rest or index >= len(block.have) or len(payload) != min(block.piece_bytes, block.ref.size - offset):
                return  # not a piece of this block as the session cuts it
            if block.have[index]:
                return  # a duplicate (repair passes resend pieces others lacked)
            if block.writer is None:
                block.writer = self.open_writer(block.ref)
            block.writer.write_at(offset, payload)
            block.have[index] = 1
            block.missing -= 1
            if block.missing == 0:
                block.closed = True
                self._emit("complete", block)
