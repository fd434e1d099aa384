"""Fetching blocks an edge node lacks: one transfer per block (single flight), peers first, the origin last.

A plan's delivery schedule (issue #22) puts the block's parents in the relay tree first: a parent
is asked without `X-Cachenet-Only-If-Cached`, so it joins (or starts) its own fetch of the block
and streams the bytes to us as they arrive; the last bytes are held back until it verified them,
and we verify them again (BLAKE3 from the plan). Fetches from one source share the rate the
schedule gives its link.

Peers that hold the block (by the controller's lookup table, or every configured peer when
there is no table) are asked with `X-Cachenet-Only-If-Cached`, so misses never cascade; the
origin is asked last and is the root of trust (its BLAKE3 header is accepted when no manifest
gave one). A source that sends wrong bytes is skipped; a block is stored only once verified.
"""

import asyncio
import logging
from pathlib import Path
from typing import Final

import aiohttp

from cachenet.blockid import validate_blake3
from cachenet.edge.admission import Admission, Sink
from cachenet.edge.config import EdgeSettings
from cachenet.edge.metrics import EdgeMetrics
from cachenet.errors import BlockCorrupt, BlockNotFound, CachenetError, CapacityExceeded, UpstreamUnavailable
from cachenet.protocol.delivery import DeliverySchedule
from cachenet.protocol.headers import BLAKE3_HEADER, ONLY_IF_CACHED_HEADER
from cachenet.server.flight import Flight
from cachenet.server.pacer import TokenBucket

__all__ = ("UpstreamFetcher",)
log = logging.getLogger(__name__)

_CHUNK_BYTES: Final = 1024 * 1024


class UpstreamFetcher:
    """Single-flight upstream transfers into the node's admission (store or spool)."""

    def __init__(self, settings: EdgeSettings, admission: Admission, metrics: EdgeMetrics) -> None:
        self.settings = settings
        self.admission = admission
        self.metrics = metrics
        self.flights: dict[str, Flight] = {}
        # Block id -> URLs of the nodes that hold it (the controller's table).
        self.lookup: dict[str, list[str]] = {}
        # Block id -> URLs of its parents in the plan's relay tree, nearest first.
        self.parents: dict[str, list[str]] = {}
        self.schedule_run = ""
        # Bytes received per source URL since the schedule was set (the measured side of a delivery).
        self.received: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one upstream HTTP session (opened on first use inside the event loop)."""
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=5, sock_connect=5, sock_read=self.settings.upstream_timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def flight(self, block_id: str, *, blake3: str | None, model: str | None) -> Flight:
        """The transfer of `block_id`: the one under way, or a new one started now."""
        flight = self.flights.get(block_id)
        if flight is not None:
            self.metrics.singleflight_merged.inc()
            return flight
        flight = Flight(block_id, size=None, blake3=blake3)
        self.flights[block_id] = flight
        task = asyncio.create_task(self._run_flight(flight, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    def sources(self, block_id: str) -> list[tuple[str, str]]:
        """(kind, URL) to try for a block: its parents in the relay tree, peers that hold it, then the origin."""
        me = self.settings.url
        parents = [u for u in self.parents.get(block_id, []) if u != me]
        holders = [u for u in self.lookup.get(block_id, []) if u.rstrip("/") != me]
        peers = [p.rstrip("/") for p in (holders if self.lookup else self.settings.peers)]
        return (
            [("parent", p) for p in parents]
            + [("peer", p) for p in peers if p not in parents]
            + [("origin", self.settings.origin_url.rstrip("/"))]
        )

    def set_schedule(self, schedule: DeliverySchedule | None) -> None:
        """Fetch planned blocks along `schedule` (None: peers and origin), pacing each source's link."""
        self.received = {}
        self._buckets = {}
        if schedule is None:
            self.parents, self.schedule_run = {}, ""
            return
        urls = [s.url.rstrip("/") for s in schedule.sources]
        self.parents = {b: [urls[i] for i in route] for b, route in schedule.routes.items()}
        self.schedule_run = schedule.run
        for source, url in zip(schedule.sources, urls, strict=True):
            if source.rate is not None:
                self._buckets[url] = TokenBucket(source.rate)
        if schedule.origin_rate is not None:
            self._buckets[self.settings.origin_url.rstrip("/")] = TokenBucket(schedule.origin_rate)

    async def close(self) -> None:
        """Cancel the transfers under way and close the session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run_flight(self, flight: Flight, model: str | None) -> None:
        try:
            path = await self._fetch(flight, model)
        except BaseException as e:  # every failure must reach the waiting requesters
            if not isinstance(e, CachenetError):
                e = UpstreamUnavailable(f"block {flight.block_id}: {e!r}", block_id=flight.block_id)
            await flight.finish(None, e)
            if not isinstance(e, CachenetError | asyncio.CancelledError):
                raise
        else:
            await flight.finish(path, None)
        finally:
            self.flights.pop(flight.block_id, None)

    async def _fetch(self, flight: Flight, model: str | None) -> Path:
        errors: list[str] = []
        for kind, url in self.sources(flight.block_id):
            try:
                return await self._fetch_from(flight, kind, url, model)
            except CapacityExceeded:
                raise  # our disk is full: another source would not help
            except BlockCorrupt as e:
                reason = "corrupt"
                log.warning("refused block %s from %s %s: %s", flight.block_id, kind, url, e)
            except (BlockNotFound, aiohttp.ClientResponseError):
                reason = "not_found"
            except (aiohttp.ClientError, TimeoutError, OSError, UpstreamUnavailable) as e:
                reason = "unreachable"
                log.warning("block %s: %s %s failed: %r", flight.block_id, kind, url, e)
            self.metrics.upstream_errors.labels(kind, reason).inc()
            errors.append(f"{kind} {url}: {reason}")
        if all(e.endswith("not_found") for e in errors):
            raise BlockNotFound(
                f"block {flight.block_id} is held by no peer and not by the origin", block_id=flight.block_id
            )
        raise UpstreamUnavailable(
            f"block {flight.block_id} could not be fetched: {'; '.join(errors)}", block_id=flight.block_id
        )

    async def _fetch_from(self, flight: Flight, kind: str, url: str, model: str | None) -> Path:
        # A parent is asked to fetch what it lacks (it is scheduled to hold it); a peer is not.
        headers = {ONLY_IF_CACHED_HEADER: "1"} if kind == "peer" else {}
        async with self.session.get(f"{url}/v1/blocks/{flight.block_id}", headers=headers) as resp:
            try:
                size, sink, path = await self._receive(flight, kind, url, resp)
            except BaseException:
                # The body was not read to its end: the connection must not go back to the
                # pool, or its next request would read this body's leftover bytes.
                resp.close()
                raise
        self.metrics.bytes_fetched.labels(kind).inc(size)
        if sink.stored:
            self.admission.stored(flight.block_id, size, model=model)
        else:
            self.admission.spooled(path)
        return path

    async def _receive(
        self, flight: Flight, kind: str, url: str, resp: aiohttp.ClientResponse
    ) -> tuple[int, Sink, Path]:
        """Stream one upstream response into a sink, verifying it; returns (size, sink, path)."""
        if resp.status == 404:
            raise BlockNotFound(f"{url} does not hold {flight.block_id}")
        if resp.status != 200 or resp.content_length is None:
            raise UpstreamUnavailable(f"{url} answered {resp.status} for block {flight.block_id}")
        size = resp.content_length
        if flight.blake3 is None and kind == "origin":
            # The origin is the root of trust: its catalogue's digest is accepted.
            given = resp.headers.get(BLAKE3_HEADER)
            flight.blake3 = validate_blake3(given) if given else None
        if flight.blake3 is None and kind != "origin":
            raise UpstreamUnavailable(f"no BLAKE3 known for {flight.block_id}; only the origin is trusted")
        sink = await self.admission.open_sink(flight.block_id, size, flight.blake3)
        flight.stored = sink.stored
        # A parent's bytes are streamed on like the origin's: the plan gave their BLAKE3, and the
        # last bytes reach no one before they verified.
        await flight.begin_attempt(sink.path, size, trusted=kind in ("origin", "parent"))
        bucket = self._buckets.get(url)
        try:
            written = 0
            async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
                if written + len(chunk) > size:
                    raise BlockCorrupt(f"{url} sent more than {size} bytes for {flight.block_id}")
                if bucket is not None:
                    await bucket.pace(len(chunk))
                await asyncio.to_thread(sink.write, chunk)
                written += len(chunk)
                self.received[url] = self.received.get(url, 0) + len(chunk)
                await flight.progress(written)
            if written != size:
                raise UpstreamUnavailable(f"{url} sent {written} of {size} bytes for {flight.block_id}")
            path = await asyncio.to_thread(sink.commit)
        except BaseException:
            sink.abort()
            raise
        return size, sink, path
