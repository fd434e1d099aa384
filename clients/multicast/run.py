"""One device's part in one multicast session: receive, repair (NACKs, then unicast ranges), verify, commit."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import aiohttp

from cachenet.blockstore import BlockStore
from cachenet.blockwriters import PieceWriter
from cachenet.errors import BlockCorrupt, CachenetError, UpstreamUnavailable
from cachenet.httpclient import raise_for_status
from cachenet.manifest import BlockRef
from cachenet.multicast.sockets import is_loopback, open_receiver
from cachenet.multicast.wire import FINAL
from cachenet.protocol.headers import REPAIR_HEADER
from clients.fetch import BlockFetcher
from clients.multicast.options import MulticastOptions, MulticastStats, Progress
from clients.multicast.receiver import IncomingBlock, SessionReceiver

__all__ = ("SessionRun", "fall_back", "unicast_only")
log = logging.getLogger(__name__)

_FINISHED_STATES: Final = frozenset({"done", "abandoned", "failed"})
_LEAVE_TIMEOUT_S: Final = 3.0
# The session state the node reports runs ahead of the datagrams still queued in this
# device's socket: it closes a block only after the socket has been quiet this long.
_QUIET_S: Final = 0.5
# Likewise before a NACK sent on the node's word rather than on the END datagram.
_NACK_QUIET_S: Final = 0.1


def unicast_only(node: str | None, why: str) -> MulticastStats:
    """Stats of a pull that used no multicast, and why."""
    return MulticastStats(node, None, False, 0, 0, 0, 0, 0, 0, 0, 0, why)


async def fall_back(
    fetcher: BlockFetcher, refs: Sequence[BlockRef], options: MulticastOptions, node: str | None, why: str
) -> MulticastStats:
    """Fetch `refs` by unicast (mode auto), or raise `UpstreamUnavailable` (mode on)."""
    if options.mode == "on":
        raise UpstreamUnavailable(f"multicast was required but {why}")
    log.info("multicast: %s; fetching by unicast", why)
    await fetcher.ensure(refs)
    return unicast_only(node, why)


def _loopback_or_none(interface: object) -> str | None:
    """The node's interface when it is a loopback address (the device is on the same machine)."""
    try:
        return interface if isinstance(interface, str) and is_loopback(interface) else None
    except ValueError:
        return None


class SessionRun:
    """One device's part in one session: receive, repair, verify, commit, leave."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        node: str,
        answer: dict[str, Any],
        refs: Sequence[BlockRef],
        options: MulticastOptions,
        progress: Progress | None,
        announcement: dict[str, Any],
    ) -> None:
        self.fetcher, self.node, self.options, self.progress = fetcher, node, options, progress
        self.store: BlockStore = fetcher.store
        self.answer = answer
        s = answer["session"]
        self.session_hex: str = s["session"]
        self.session_id = bytes.fromhex(self.session_hex)
        self.member: str = answer["member"]
        self.group, self.port, self.piece_bytes = str(s["group"]), int(s["port"]), int(s["piece_bytes"])
        by_id = {r.block_id: r for r in refs}
        self.multicast = [by_id[b] for b in answer["multicast"]]
        self.repair_first = [by_id[b] for b in answer["repair"]]
        self.unicast = [by_id[b] for b in answer["unicast"]]
        self.interface = options.interface or _loopback_or_none(announcement.get("interface"))
        self.incoming: dict[bytes, IncomingBlock] = {}
        self.joined_at = int(s.get("cursor", 0)) if answer.get("late") else 0  # the block being sent then
        self.ended = False  # the node says the session is over (or cannot be asked any more)
        self.final_seen = False  # the final END datagram arrived: every piece sent is behind us
        self.round_seen = 0  # the latest repair round an END datagram opened: time to report losses
        self.round_polled = 0  # the latest the node reported (its END may still wait in the socket)
        self.round_nacked = 0
        self.nacks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()
        self.failure: BaseException | None = None
        self.finishing: set[str] = set()
        self.repair_bytes = 0
        self.missed_bytes = 0
        self.multicast_bytes = 0
        self.multicast_blocks = 0
        self.refused = 0
        self.repaired_blocks = 0
        self.stored_bytes = 0
        self.expected_bytes = 0
        self.receiver: SessionReceiver | None = None
        self.repair_slots = asyncio.Semaphore(options.repair_concurrency)

    async def run(self) -> MulticastStats:
        try:
            sock = await asyncio.to_thread(open_receiver, self.group, self.port, interface=self.interface)
        except OSError as e:
            await self._leave(0, 0)
            all_refs = [*self.multicast, *self.repair_first, *self.unicast]
            return await fall_back(
                self.fetcher,
                all_refs,
                self.options,
                self.node,
                f"cannot join group {self.group}:{self.port} on {self.interface or 'any'}: {e}",
            )
        try:
            for ref, seq in zip(self.multicast, self.answer["multicast_seq"], strict=True):
                if not self.store.has(ref.block_id):
                    self.incoming[bytes.fromhex(ref.block_id)] = IncomingBlock(ref, int(seq), self.piece_bytes)
            self.receiver = SessionReceiver(
                sock,
                self.session_id,
                self.incoming,
                loop=asyncio.get_running_loop(),
                on_event=self._on_event,
                open_writer=self._open_writer,
            )
            self.receiver.start()
            await self._deliver()
        finally:
            if self.receiver is not None:
                await self.receiver.stop()
            else:
                sock.close()
            for block in self.incoming.values():
                if block.writer is not None:
                    block.writer.abort()  # no-op for committed blocks
            await self._leave(self.expected_bytes, self.missed_bytes)
        return MulticastStats(
            self.node,
            self.session_hex,
            bool(self.answer.get("late")),
            self.multicast_blocks,
            self.multicast_bytes,
            self.expected_bytes,
            self.missed_bytes,
            self.repair_bytes,
            self.repaired_blocks,
            self.stored_bytes,
            self.refused,
            None,
        )

    def _open_writer(self, ref: BlockRef) -> PieceWriter:
        return self.store.piece_writer(ref.block_id, blake3=ref.blake3, size=ref.size)

    async def _deliver(self) -> None:
        unicast = asyncio.create_task(self.fetcher.ensure(self.unicast), name="multicast: unicast share")
        poller = asyncio.create_task(self._poll(), name="multicast: session state")
        repairs = [asyncio.create_task(self._repair_whole(r)) for r in self.repair_first]
        finishers: list[asyncio.Task[None]] = []
        try:
            while True:
                due = max(self.round_seen, self.round_polled if self._quiet(_NACK_QUIET_S) else 0)
                if due > self.round_nacked and not self.final_seen:
                    self.round_nacked = due
                    self.nacks.append(asyncio.create_task(self._send_nack(due), name=f"multicast: NACK {due}"))
                for block in list(self.incoming.values()):
                    key = block.ref.block_id
                    if key in self.finishing:
                        continue
                    if block.missing == 0 or self._settled():
                        self.finishing.add(key)
                        finishers.append(asyncio.create_task(self._finish(block)))
                if self.failure is not None:
                    raise self.failure
                if len(self.finishing) == len(self.incoming):
                    break
                self.changed.clear()
                await self.changed.wait()
            await asyncio.gather(*finishers, *repairs, unicast)
        finally:
            extra = [poller, *self.nacks]
            for t in [*extra, *finishers, *repairs, unicast]:
                t.cancel()
            await asyncio.gather(*extra, *finishers, *repairs, unicast, return_exceptions=True)

    def _settled(self) -> bool:
        """Whether nothing more will come by multicast: what blocks lack now comes by unicast repair.

        The final END datagram settles it at once; the node's word that the session is over
        settles it once the socket has gone quiet (datagrams may still wait in it).
        """
        if self.final_seen:
            return True
        return self.ended and self._quiet(_QUIET_S)

    def _quiet(self, seconds: float) -> bool:
        """No datagram of this session for `seconds`: whatever was queued in the socket has been read."""
        assert self.receiver is not None
        return time.monotonic() - self.receiver.last_datagram_at >= seconds

    def _on_event(self, kind: str, value: object) -> None:
        if kind == "end" and isinstance(value, tuple):
            flags, repair_round = value
            if flags & FINAL:
                self.final_seen = True
            else:
                self.round_seen = max(self.round_seen, repair_round)
        elif kind == "socket":
            self.final_seen = True  # nothing more will arrive: repair what is missing
        elif kind == "error" and isinstance(value, BaseException):
            self.failure = value
        self.changed.set()

    async def _send_nack(self, repair_round: int) -> None:
        """Report the pieces lacking when a repair round starts; the node may send them again by multicast."""
        missing: list[list[int]] = []
        for block in self.incoming.values():
            if block.missing == 0 or block.ref.block_id in self.finishing:
                continue
            runs = block.missing_runs()
            if block.lost_in_main_pass is None:
                block.lost_in_main_pass = sum(
                    min(hi * block.piece_bytes, block.ref.size) - lo * block.piece_bytes for lo, hi in runs
                )
            missing.extend([block.seq, lo, hi] for lo, hi in runs)
        if not missing:
            return
        body = {"member": self.member, "round": repair_round, "missing": missing}
        try:
            async with self.fetcher.pool.session.post(
                f"{self.node}/v1/multicast/sessions/{self.session_hex}/nack",
                json=body,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                await raise_for_status(resp)
        except (aiohttp.ClientError, TimeoutError, OSError, CachenetError) as e:
            log.info("could not report losses to %s (%s); they will be repaired by unicast", self.node, e)

    async def _poll(self) -> None:
        """Follow the session's state: END datagrams can be lost too, and a group may carry nothing at all."""
        url = f"{self.node}/v1/multicast/sessions/{self.session_hex}"
        idle_since = self.fetcher.pool.now()
        last: tuple[int, str, int] = (-1, "", -1)
        while True:
            await asyncio.sleep(self.options.poll_interval_s)
            self.changed.set()  # also to look at the socket's quiet time again
            if self.ended:
                continue
            try:
                async with self.fetcher.pool.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await raise_for_status(resp)
                    doc = await resp.json()
                cursor, state, sent = int(doc["cursor"]), str(doc["state"]), int(doc.get("sent_bytes", 0))
                polled_round = int(doc.get("repair_round", 0))
            except (aiohttp.ClientError, TimeoutError, OSError, CachenetError, ValueError, KeyError, TypeError) as e:
                log.info("multicast session state unavailable: %s", e)
                if self.fetcher.pool.now() - idle_since > self.options.idle_timeout_s:
                    self.ended = True  # repair what is missing, from wherever it can be had
                continue
            if (cursor, state, sent) != last:
                idle_since, last = self.fetcher.pool.now(), (cursor, state, sent)
            elif self.fetcher.pool.now() - idle_since > self.options.idle_timeout_s:
                log.warning(
                    "multicast session %s made no progress for %.0f s; repairing the rest",
                    self.session_hex,
                    self.options.idle_timeout_s,
                )
                self.ended = True
            if state == "repairing":
                self.round_polled = max(self.round_polled, polled_round)
            if state in _FINISHED_STATES:
                self.ended = True

    async def _finish(self, block: IncomingBlock) -> None:
        assert self.receiver is not None
        self.receiver.close(block)
        ref = block.ref
        holes = block.holes()
        missed = sum(b - a for a, b in holes)
        lost = block.lost_in_main_pass if block.lost_in_main_pass is not None else missed
        # A late joiner's first block was partly sent before it joined: that is not loss.
        if not (self.answer.get("late") and block.seq == self.joined_at):
            self.expected_bytes += ref.size
            self.missed_bytes += lost
        if missed:
            log.debug(
                "block %s (seq %d): %d of %d bytes lost in %d holes; repairing",
                ref.block_id,
                block.seq,
                missed,
                ref.size,
                len(holes),
            )
        if block.writer is None:
            block.writer = await asyncio.to_thread(self._open_writer, ref)
        if await self._complete(ref, block.writer, holes):
            self.multicast_blocks += 1
            self.multicast_bytes += ref.size - missed

    async def _repair_whole(self, ref: BlockRef) -> None:
        """A block the session sent before this device joined: fetched whole by repair."""
        if self.store.has(ref.block_id):
            return
        writer = await asyncio.to_thread(self._open_writer, ref)
        if await self._complete(ref, writer, [(0, ref.size)]):
            self.repaired_blocks += 1

    async def _complete(self, ref: BlockRef, writer: PieceWriter, ranges: list[tuple[int, int]]) -> bool:
        """Repair `ranges` into `writer`, verify and commit; True when that worked.

        Otherwise the block is fetched whole by unicast, from any source.
        """
        try:
            for start, end in ranges:
                await self._repair_range(ref, start, end, writer.write_at)
            await asyncio.to_thread(writer.commit)
        except (aiohttp.ClientError, TimeoutError, OSError, CachenetError) as e:
            if isinstance(e, BlockCorrupt):
                self.refused += 1
            writer.abort()
            log.warning("block %s could not be completed by repair (%s); fetching it whole", ref.block_id, e)
            await self.fetcher.ensure([ref])
            return False
        except BaseException:
            writer.abort()  # cancelled: leave no temporary file or reservation behind
            raise
        self.stored_bytes += ref.size
        if self.progress is not None:
            self.progress(ref.size)
        return True

    async def _repair_range(self, ref: BlockRef, start: int, end: int, write_at: Callable[[int, bytes], None]) -> None:
        """Fetch bytes [start, end) of a block from the node by HTTP Range into `write_at`."""
        headers = {"Range": f"bytes={start}-{end - 1}", REPAIR_HEADER: self.session_hex}
        async with (
            self.repair_slots,
            self.fetcher.pool.session.get(f"{self.node}/v1/blocks/{ref.block_id}", headers=headers) as resp,
        ):
            await raise_for_status(resp)
            expected = f"bytes {start}-{end - 1}/{ref.size}"
            if resp.status != 206 or resp.headers.get("Content-Range") != expected:
                raise BlockCorrupt(
                    f"block {ref.block_id}: asked for {expected}, got status {resp.status} "
                    f"{resp.headers.get('Content-Range')!r}",
                    block_id=ref.block_id,
                )
            position = start
            async for chunk in resp.content.iter_chunked(1024 * 1024):
                if position + len(chunk) > end:
                    raise BlockCorrupt(f"block {ref.block_id}: repair sent more than asked", block_id=ref.block_id)
                await asyncio.to_thread(write_at, position, chunk)
                position += len(chunk)
                self.repair_bytes += len(chunk)
            if position != end:
                raise ConnectionResetError(f"block {ref.block_id}: repair ended at byte {position} of {end}")

    async def _leave(self, expected: int, missed: int) -> None:
        body = {"member": self.member, "expected_bytes": expected, "missed_bytes": min(missed, expected)}
        try:
            async with self.fetcher.pool.session.post(
                f"{self.node}/v1/multicast/sessions/{self.session_hex}/leave",
                json=body,
                timeout=aiohttp.ClientTimeout(total=_LEAVE_TIMEOUT_S),
            ) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.info("could not tell %s this device left session %s: %s", self.node, self.session_hex, e)
