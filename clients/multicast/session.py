"""Multicast-aware fetching: shared blocks from a node's multicast session, the rest by unicast.

The device asks the first source that announces multicast (`GET /v1/multicast`) to plan
its missing blocks (`POST /v1/multicast/join`). The node batches the devices that ask
within a short window and answers each with its share: blocks its session sends by
multicast, blocks sent before a late joiner arrived (fetched by repair), and blocks for
unicast. The device joins the session's group and receives pieces into partial blocks
while the unicast blocks stream in through the ordinary fetcher. When the main pass ends
(END datagram, or the node's session state) it reports the pieces it lacks (NACK); the
node sends pieces that several members lack once more by multicast, and after the final
END the pieces still missing are fetched by HTTP Range from the node (unicast repair,
marked with `X-Cachenet-Repair`). Every block is verified against its id and
BLAKE3 before it is committed; one that does not verify is fetched whole by unicast.

Modes: `off` never asks; `auto` asks when a source announces multicast and falls back
to unicast whenever multicast cannot be had (no node offers it, the group cannot be
joined, the node plans unicast); `on` fails instead of falling back.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from cachenet.blockstore import BlockStore
from cachenet.blockwriters import PieceWriter
from cachenet.errors import BadInput, BlockCorrupt, CachenetError, UpstreamUnavailable
from cachenet.httpclient import raise_for_status
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.multicast.sockets import is_loopback, open_receiver, validate_group
from cachenet.multicast.wire import FINAL
from cachenet.protocol.headers import REPAIR_HEADER
from clients.fetch import BlockFetcher
from clients.multicast.receiver import IncomingBlock, SessionReceiver

__all__ = ("MULTICAST_MODES", "MulticastOptions", "MulticastStats", "fetch_with_multicast")
log = logging.getLogger(__name__)

MULTICAST_MODES: Final = ("auto", "on", "off")
_FINISHED_STATES: Final = frozenset({"done", "abandoned", "failed"})
_ANNOUNCE_TIMEOUT_S: Final = 3.0
_LEAVE_TIMEOUT_S: Final = 3.0
# The session state the node reports runs ahead of the datagrams still queued in this
# device's socket: it closes a block only after the socket has been quiet this long.
_QUIET_S: Final = 0.5
# Likewise before a NACK sent on the node's word rather than on the END datagram.
_NACK_QUIET_S: Final = 0.1

Progress = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class MulticastOptions:
    """How a pull uses multicast."""

    mode: str = "auto"
    interface: str | None = None  # local IPv4 address to join on (default: loopback for a loopback node, else any)
    rate: float | None = None  # bytes/s this device's link takes, told to the node's planner
    join_timeout_s: float = 30.0
    poll_interval_s: float = 0.25
    idle_timeout_s: float = 15.0
    repair_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MULTICAST_MODES:
            raise BadInput(f"multicast mode must be one of {', '.join(MULTICAST_MODES)}, got {self.mode!r}")
        if self.rate is not None and self.rate <= 0:
            raise BadInput(f"link rate must be positive, got {self.rate}")
        if self.repair_concurrency < 1 or self.poll_interval_s <= 0 or self.idle_timeout_s <= 0:
            raise BadInput("repair concurrency, poll interval and idle timeout must be positive")


@dataclass(frozen=True, slots=True)
class MulticastStats:
    """What multicast did for one pull."""

    node: str | None
    session: str | None
    late: bool
    multicast_blocks: int
    multicast_bytes: int
    expected_bytes: int
    missed_bytes: int
    repair_bytes: int
    repaired_blocks: int
    stored_bytes: int
    refused_blocks: int
    fallback: str | None

    @property
    def loss(self) -> float:
        """Share of the bytes expected by multicast that were lost (and repaired)."""
        return self.missed_bytes / self.expected_bytes if self.expected_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The stats as JSON."""
        return {
            "node": self.node,
            "session": self.session,
            "late": self.late,
            "multicast_blocks": self.multicast_blocks,
            "multicast_bytes": self.multicast_bytes,
            "expected_bytes": self.expected_bytes,
            "missed_bytes": self.missed_bytes,
            "repair_bytes": self.repair_bytes,
            "repaired_blocks": self.repaired_blocks,
            "stored_bytes": self.stored_bytes,
            "refused_blocks": self.refused_blocks,
            "loss": round(self.loss, 6),
            "fallback": self.fallback,
        }


def _unicast_only(node: str | None, why: str) -> MulticastStats:
    return MulticastStats(node, None, False, 0, 0, 0, 0, 0, 0, 0, 0, why)


async def fetch_with_multicast(
    refs: Sequence[BlockRef],
    *,
    manifest: ModelManifest,
    fetcher: BlockFetcher,
    options: MulticastOptions,
    progress: Progress | None = None,
) -> MulticastStats:
    """Store every block of `refs`, using a node's multicast session where one covers them.

    Raises what `BlockFetcher.ensure` raises, and `UpstreamUnavailable` in mode `on` when
    no multicast could be had.
    """
    if options.mode == "off" or not refs:
        await fetcher.ensure(refs)
        return _unicast_only(None, "off" if options.mode == "off" else "nothing to fetch")
    node, announcement = await _find_node(fetcher, options)
    if node is None:
        return await _fall_back(fetcher, refs, options, None, "no source announces multicast")
    try:
        answer = await _join(fetcher, node, manifest, refs, options)
    except (aiohttp.ClientError, TimeoutError, OSError, CachenetError, ValueError) as e:
        return await _fall_back(fetcher, refs, options, node, f"join failed: {e}")
    if answer["session"] is None:
        await fetcher.ensure(refs)
        return _unicast_only(node, "the node planned unicast (no other device shares these blocks now)")
    run = _SessionRun(fetcher, node, answer, refs, options, progress, announcement)
    return await run.run()


async def _fall_back(
    fetcher: BlockFetcher, refs: Sequence[BlockRef], options: MulticastOptions, node: str | None, why: str
) -> MulticastStats:
    if options.mode == "on":
        raise UpstreamUnavailable(f"multicast was required but {why}")
    log.info("multicast: %s; fetching by unicast", why)
    await fetcher.ensure(refs)
    return _unicast_only(node, why)


async def _find_node(fetcher: BlockFetcher, options: MulticastOptions) -> tuple[str | None, dict[str, Any]]:
    """The first source (in the order given) that announces multicast, with its announcement."""
    session = fetcher.pool.session

    async def ask(url: str) -> dict[str, Any] | None:
        try:
            async with session.get(
                f"{url}/v1/multicast", timeout=aiohttp.ClientTimeout(total=_ANNOUNCE_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json()
                return doc if isinstance(doc, dict) and doc.get("enabled") is True else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    urls = [s.url for s in fetcher.pool.sources]
    for url, doc in zip(urls, await asyncio.gather(*(ask(u) for u in urls)), strict=True):
        if doc is not None:
            return url, doc
    return None, {}


async def _join(
    fetcher: BlockFetcher, node: str, manifest: ModelManifest, refs: Sequence[BlockRef], options: MulticastOptions
) -> dict[str, Any]:
    body = {
        "model": manifest.name,
        "revision": manifest.revision,
        "blocks": [r.block_id for r in refs],
        "rate": options.rate,
    }
    async with fetcher.pool.session.post(
        f"{node}/v1/multicast/join", json=body, timeout=aiohttp.ClientTimeout(total=options.join_timeout_s)
    ) as resp:
        await raise_for_status(resp)
        answer: dict[str, Any] = await resp.json()
    wanted = {r.block_id for r in refs}
    try:
        seqs = answer["multicast_seq"]
        if len(seqs) != len(answer["multicast"]) or not all(type(x) is int and x >= 0 for x in seqs):
            raise ValueError("the join answer's multicast_seq does not match its multicast blocks")
        listed = [*answer["multicast"], *answer["repair"], *answer["unicast"]]
        if len(listed) != len(set(listed)):
            raise ValueError("the join answer names a block twice")
        for key in ("multicast", "repair", "unicast"):
            if not isinstance(answer[key], list) or not set(answer[key]) <= wanted:
                raise ValueError(f"the join answer's {key!r} names blocks this device did not ask for")
        if set(answer["multicast"]) | set(answer["repair"]) | set(answer["unicast"]) != wanted:
            raise ValueError("the join answer does not account for every block asked for")
        if answer["session"] is not None:
            s = answer["session"]
            validate_group(str(s["group"]))
            bytes.fromhex(s["session"])
            if not (1 <= int(s["port"]) <= 65535 and 512 <= int(s["piece_bytes"]) <= 65000):
                raise ValueError("bad port or piece size")
            bytes.fromhex(answer["member"])
    except (KeyError, TypeError, BadInput) as e:
        raise ValueError(f"malformed join answer from {node}: {e}") from None
    return answer


def _loopback_or_none(interface: object) -> str | None:
    """The node's interface when it is a loopback address (the device is on the same machine)."""
    try:
        return interface if isinstance(interface, str) and is_loopback(interface) else None
    except ValueError:
        return None


class _SessionRun:
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
            return await _fall_back(
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
