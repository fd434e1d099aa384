"""The servers a device pulls from: manifests from the first that answers, blocks by throughput.

Each source (origin or edge node, any server of the device API) has a connection limit, a
throughput estimate (EWMA of the bytes it delivered per second while busy) and a health
state: a source that fails at the transport level is skipped for a back-off that doubles
with each consecutive failure. A block goes to the source that would finish it first:
the one with the least `(bytes still owed + block size) / throughput`, waiting for a free
connection there rather than handing the block to a much slower source.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from cachenet.errors import (
    BadInput,
    CachenetError,
    ManifestInvalid,
    ModelNotFound,
    NotFound,
    UpstreamUnavailable,
)
from cachenet.httpclient import raise_for_status
from cachenet.manifest import ModelManifest
from cachenet.names import COMMIT_RE, validate_model_name, validate_revision
from cachenet.protocol.headers import CELL_HEADER, DEMAND_HEADER
from clients.config import DEFAULT_SETTINGS, PullSettings

__all__ = ("NoSourceLeft", "Source", "SourcePool", "SourceReport")
log = logging.getLogger(__name__)

# Throughput assumed for a source not measured yet (so that every source gets tried).
DEFAULT_PRIOR_BYTES_PER_S: Final = 100e6
_RATE_WINDOW_S: Final = 0.25
_EWMA_WEIGHT: Final = 0.5


@dataclass(frozen=True, slots=True)
class SourceReport:
    """What one source contributed to a pull."""

    url: str
    bytes: int
    blocks: int
    errors: int
    corrupt: int
    rate_bytes_per_s: float | None

    def to_json(self) -> dict[str, object]:
        """The report as JSON."""
        return {
            "url": self.url,
            "bytes": self.bytes,
            "blocks": self.blocks,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "rate_bytes_per_s": self.rate_bytes_per_s,
        }


class Source:
    """One server's live state during a pull (owned by its `SourcePool`, mutated on the loop)."""

    __slots__ = (
        "_b0",
        "_t0",
        "active",
        "blocks",
        "corrupt",
        "delivered",
        "down_until",
        "errors",
        "failures",
        "index",
        "limit",
        "outstanding",
        "rate",
        "url",
    )

    def __init__(self, url: str, index: int, limit: int) -> None:
        self.url = url
        self.index = index
        self.limit = limit
        self.active = 0
        self.outstanding = 0
        self.delivered = 0
        self.blocks = 0
        self.errors = 0
        self.corrupt = 0
        self.failures = 0
        self.down_until = 0.0
        self.rate: float | None = None
        self._t0: float | None = None
        self._b0 = 0

    def note_bytes(self, n: int, now: float) -> None:
        """Count bytes received and update the throughput estimate."""
        if self._t0 is None:
            self._t0, self._b0 = now, self.delivered
        self.delivered += n
        self.outstanding = max(0, self.outstanding - n)
        elapsed = now - self._t0
        if elapsed >= _RATE_WINDOW_S:
            sample = (self.delivered - self._b0) / elapsed
            self.rate = sample if self.rate is None else _EWMA_WEIGHT * sample + (1 - _EWMA_WEIGHT) * self.rate
            self._t0, self._b0 = now, self.delivered

    def report(self) -> SourceReport:
        """A snapshot for the pull report."""
        return SourceReport(self.url, self.delivered, self.blocks, self.errors, self.corrupt, self.rate)


class SourcePool:
    """Several sources behind one HTTP session, with connection limits and health."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        settings: PullSettings = DEFAULT_SETTINGS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise BadInput("give at least one source URL (an origin or edge node)")
        cleaned: list[str] = []
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise BadInput(f"source {url!r} is not an http(s) URL")
            if url.rstrip("/") not in cleaned:
                cleaned.append(url.rstrip("/"))
        self.settings = settings
        self.sources = tuple(Source(u, i, settings.per_source_connections) for i, u in enumerate(cleaned))
        self._clock = clock
        self._cond = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared HTTP session (created on first use, inside the running loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=self.settings.stall_timeout_s,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def now(self) -> float:
        """The pool's clock."""
        return self._clock()

    async def manifest(self, name: str, revision: str, *, demand: bool = False) -> ModelManifest:
        """The manifest from the first source that has it; a commit id must match exactly.

        `demand`: this is the model the device wants (the node counts it as a request, in the
        settings' cell). Raises `ModelNotFound` when every source that answered lacks it,
        `UpstreamUnavailable` when none answered or every answer was invalid.
        """
        validate_model_name(name)
        validate_revision(revision)
        timeout = aiohttp.ClientTimeout(
            total=self.settings.manifest_timeout_s, sock_connect=self.settings.connect_timeout_s
        )
        problems: list[str] = []
        not_found: CachenetError | None = None
        headers = {DEMAND_HEADER: "1"} if demand else {}
        if demand and self.settings.cell:
            headers[CELL_HEADER] = self.settings.cell
        for src in self.sources:
            url = f"{src.url}/v1/models/{name}/revisions/{revision}"
            try:
                async with self.session.get(url, timeout=timeout, headers=headers) as resp:
                    await raise_for_status(resp)
                    manifest = ModelManifest.from_bytes(await resp.read())
            except NotFound as e:
                not_found = not_found or e
                problems.append(f"{src.url}: not found")
                continue
            except (aiohttp.ClientError, TimeoutError, OSError, CachenetError) as e:
                if isinstance(e, ManifestInvalid):
                    log.warning(
                        "source %s sent an invalid manifest for %s@%s: %s",
                        src.url,
                        name,
                        revision,
                        e,
                    )
                src.errors += 1
                problems.append(f"{src.url}: {_describe(e)}")
                continue
            if manifest.name != name or (COMMIT_RE.match(revision) and manifest.revision != revision):
                # The revision is the hash of the content: a source cannot pass off another one.
                src.errors += 1
                problems.append(f"{src.url}: sent {manifest.name}@{manifest.revision[:12]} instead")
                continue
            return manifest
        if (
            not_found is not None
            and len(problems) == len(self.sources)
            and all(p.endswith("not found") for p in problems)
        ):
            raise ModelNotFound(f"no source has {name}@{revision} ({'; '.join(problems)})", model=name)
        raise UpstreamUnavailable(
            f"could not get the manifest of {name}@{revision} from any source: {'; '.join(problems)}",
            model=name,
        )

    async def acquire(self, size: int, exclude: set[str]) -> Source:
        """A connection slot on the source that would finish `size` more bytes first.

        Waits while that source is busy or every usable source is backing off; raises
        `NoSourceLeft` when every source is excluded.
        """
        async with self._cond:
            while True:
                now = self._clock()
                usable = [s for s in self.sources if s.url not in exclude]
                if not usable:
                    raise NoSourceLeft
                up = [s for s in usable if s.down_until <= now]
                timeout: float | None = None
                if up:
                    best = min(up, key=lambda s: (self._cost(s, size), s.index))
                    if best.active < best.limit:
                        best.active += 1
                        best.outstanding += size
                        return best
                else:
                    timeout = max(0.001, min(s.down_until for s in usable) - now)
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout)
                except TimeoutError:
                    pass

    async def release(self, src: Source, *, unused: int = 0) -> None:
        """Give back a slot taken by `acquire` (`unused`: bytes it no longer owes)."""
        async with self._cond:
            src.active -= 1
            src.outstanding = max(0, src.outstanding - unused)
            if src.active == 0:
                src._t0 = None  # idle time must not count against its throughput
            self._cond.notify_all()

    def succeeded(self, src: Source) -> None:
        """A transfer from `src` completed: it is healthy."""
        src.failures = 0
        src.blocks += 1

    def failed(self, src: Source, error: BaseException, *, transport: bool) -> None:
        """A transfer from `src` failed; transport failures make it back off."""
        src.errors += 1
        if transport:
            src.failures += 1
            delay = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (src.failures - 1))
            src.down_until = self._clock() + delay
            log.warning("source %s failed (%s); skipping it for %.2f s", src.url, _describe(error), delay)

    def reports(self) -> tuple[SourceReport, ...]:
        """Per-source contributions."""
        return tuple(s.report() for s in self.sources)

    def _cost(self, src: Source, size: int) -> float:
        measured = [s.rate for s in self.sources if s.rate]
        prior = max(measured) if measured else DEFAULT_PRIOR_BYTES_PER_S
        return (src.outstanding + size) / (src.rate or prior)


class NoSourceLeft(LookupError):
    """Every source was excluded for one block (the fetcher decides whether to start over)."""


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]
