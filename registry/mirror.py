"""Pull-through mirroring of an upstream Hugging Face-compatible hub into the catalogue.

A repository, revision or file the catalogue lacks is fetched from the upstream's public
HTTP API (`/api/models/{repo}/revision/{rev}`, `/api/models/{repo}/tree/{commit}`,
`/{repo}/resolve/{commit}/{path}`), cut into blocks while it streams through (one pass,
`StreamCutter`), checked against the upstream's size and LFS SHA-256, and stored; when
every file of a revision is in, the revision is published under the upstream's repository
id and commit. Concurrent requesters of one file share one upstream transfer. A moving
ref (branch or tag) is revalidated every `revalidate_s`; with the upstream unreachable it
resolves to the last known commit and the response says so (`X-Cachenet-Stale-Ref`).
"""

import asyncio
import contextvars
import fnmatch
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from cachenet.blockstore import BlockStore
from cachenet.errors import (
    BadInput,
    CachenetError,
    FileNotInModel,
    Forbidden,
    IntegrityError,
    ModelNotFound,
    NotFound,
    RepoNotFound,
    RevisionNotFound,
    UpstreamTimeout,
)
from cachenet.httpclient import raise_for_status
from cachenet.manifest import UPSTREAM_COMMIT_KEY, BlockRef, FileManifest, ModelManifest
from cachenet.names import COMMIT_RE, validate_file_path
from cachenet.server.deviceapi import StreamingFile
from cachenet.server.flight import Flight
from registry.catalogue import Catalogue
from registry.chunking import DEFAULT_MAX_BLOCK_BYTES, StreamCutter
from registry.intake import store_blocks

__all__ = (
    "Mirror",
    "MirrorRules",
    "STALE_REF",
    "UpstreamHub",
)
log = logging.getLogger(__name__)

# Set while a request is served from a moving ref the upstream could not revalidate.
STALE_REF: contextvars.ContextVar[str | None] = contextvars.ContextVar("stale_ref", default=None)
_READ_BYTES: Final = 1024 * 1024
_BATCH_BYTES: Final = 16 * 1024 * 1024
_SPOOL_LINGER_S: Final = 60.0
# What an upstream hub's X-Error-Code on a 404 says is missing.
_MISSING: Final[dict[str, type[NotFound]]] = {"RevisionNotFound": RevisionNotFound, "EntryNotFound": FileNotInModel}
STREAM_MIN_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MirrorRules:
    """Which repositories may be mirrored, how big a file may be, whether commits must be pinned."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_file_bytes: int | None = None
    require_commit: bool = False

    def check_repo(self, name: str) -> None:
        """Raise `Forbidden` for a repository a deny pattern matches or no allow pattern matches."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.deny):
            raise Forbidden(f"repository {name!r} is refused by this mirror's deny rules", model=name)
        if self.allow and not any(fnmatch.fnmatchcase(name, p) for p in self.allow):
            raise Forbidden(f"repository {name!r} is not in this mirror's allow list", model=name)

    def check_file(self, name: str, path: str, size: int) -> None:
        """Raise `Forbidden` for a file over the size limit."""
        if self.max_file_bytes is not None and size > self.max_file_bytes:
            raise Forbidden(
                f"{name}/{path} is {size} bytes, over this mirror's limit of {self.max_file_bytes}",
                model=name,
                path=path,
            )


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """One file of an upstream revision: path, size and (for LFS files) SHA-256."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True, slots=True)
class UpstreamRevision:
    """An upstream revision: its commit and files."""

    name: str
    commit: str
    files: tuple[UpstreamFile, ...]


class UpstreamHub:
    """The upstream hub's public HTTP API (works against the Hugging Face Hub and any mirror of it)."""

    def __init__(self, url: str, *, token: str | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """One HTTP session, opened in the running loop on first use."""
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_read=self.timeout_s)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self._session

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    async def revision(self, name: str, revision: str) -> UpstreamRevision:
        """Commit and file list of `name` at `revision`; raises `UpstreamTimeout` when unreachable."""
        info = await self._json(f"/api/models/{name}/revision/{quote(revision, safe='')}")
        commit = str(info.get("sha") or "")
        if not COMMIT_RE.match(commit):
            raise UpstreamTimeout(f"upstream {self.url} gave no commit for {name}@{revision}", upstream=self.url)
        files: list[UpstreamFile] = []
        url: str | None = f"/api/models/{name}/tree/{commit}?recursive=true"
        while url is not None:
            entries, url = await self._json_page(url)
            for e in entries:
                if e.get("type") != "file":
                    continue
                lfs = e.get("lfs") or {}
                files.append(UpstreamFile(validate_file_path(str(e["path"])), int(e["size"]), lfs.get("oid")))
        return UpstreamRevision(name, commit, tuple(files))

    async def stream(self, name: str, commit: str, path: str) -> AsyncIterator[bytes]:
        """The bytes of one file at a commit, as they arrive."""
        try:
            async with self.session.get(f"{self.url}/{name}/resolve/{commit}/{path}") as resp:
                await raise_for_status(resp)
                try:
                    async for chunk in resp.content.iter_chunked(_READ_BYTES):
                        yield chunk
                except BaseException:
                    resp.close()  # never pool a connection whose body was not read to the end
                    raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(e) from e

    async def _json(self, path: str) -> dict[str, Any]:
        doc, _ = await self._json_page(path)
        if not isinstance(doc, dict):
            raise UpstreamTimeout(f"upstream {self.url} sent unexpected JSON for {path}", upstream=self.url)
        return doc

    async def _json_page(self, path: str) -> tuple[Any, str | None]:
        url = path if path.startswith("http") else f"{self.url}{path}"
        try:
            async with self.session.get(url) as resp:
                if resp.status in (401, 403, 404):
                    cls = _MISSING.get(resp.headers.get("X-Error-Code", ""), RepoNotFound)
                    raise cls(f"upstream {self.url} has no {path} (HTTP {resp.status})", upstream=self.url)
                await raise_for_status(resp)
                doc = await resp.json()
                link = resp.links.get("next")
                nxt = None if link is None else link.get("url")
                return doc, None if nxt is None else str(nxt)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(e) from e

    def _unreachable(self, e: BaseException) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"upstream hub {self.url} is unreachable ({type(e).__name__}) and this is not cached here",
            upstream=self.url,
        )


@dataclass
class _Pending:
    revision: UpstreamRevision
    done: dict[str, FileManifest] = field(default_factory=dict)
    flights: dict[str, Flight] = field(default_factory=dict)


class Mirror:
    """Fills the catalogue from an upstream hub on demand."""

    def __init__(
        self,
        catalogue: Catalogue,
        store: BlockStore,
        hub: UpstreamHub,
        *,
        rules: MirrorRules,
        revalidate_s: float = 60.0,
        max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
        spool_dir: Path | None = None,
        stream_min_bytes: int = STREAM_MIN_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalogue, self.store, self.hub, self.rules = catalogue, store, hub, rules
        self.spool_dir = spool_dir or store.root / "mirror-spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self.stream_min_bytes = stream_min_bytes
        self.revalidate_s = revalidate_s
        self.max_block_size = max_block_size
        self._clock = clock
        self._checked: dict[tuple[str, str], float] = {}
        self._pending: dict[str, _Pending] = {}
        self._files: dict[tuple[str, str], asyncio.Task[FileManifest]] = {}
        self._revisions: dict[str, asyncio.Task[ModelManifest]] = {}

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of a revision, mirroring every file of it first when needed."""
        commit, tag = await self._resolve(name, revision)
        try:
            return await asyncio.to_thread(self.catalogue.manifest_by_commit, commit)
        except ModelNotFound:
            pass
        task = self._revisions.get(commit)
        if task is None:
            task = asyncio.create_task(self._mirror_revision(name, commit, tag))
            self._revisions[commit] = task
            task.add_done_callback(lambda _t: self._revisions.pop(commit, None))
        return await asyncio.shield(task)

    async def resolve_file(
        self, name: str, revision: str, path: str
    ) -> tuple[ModelManifest, FileManifest | StreamingFile]:
        """One file of a revision, mirroring only that file when the revision is not complete.

        A large LFS file (whose SHA-256 the upstream's tree names) is streamed to the first
        requesters while it arrives; the others wait for the stored file.
        """
        commit, _tag = await self._resolve(name, revision)
        try:
            manifest = await asyncio.to_thread(self.catalogue.manifest_by_commit, commit)
            return manifest, manifest.file(path)
        except ModelNotFound:
            pass
        pending = await self._pending_revision(name, commit)
        partial = ModelManifest(name, tuple(pending.done.values()), metadata={UPSTREAM_COMMIT_KEY: commit})
        entry = next((f for f in pending.revision.files if f.path == path), None)
        if entry is not None and entry.sha256 and entry.size >= self.stream_min_bytes and path not in pending.done:
            task = self._start_file(pending, path)
            flight = pending.flights.get(path)
            if flight is not None:
                await flight.wait_started()
                if not flight.done:
                    return partial, StreamingFile(path, entry.size, entry.sha256, flight)
            await asyncio.shield(task)
        f = await self._ensure_file(pending, path)
        partial = ModelManifest(name, tuple(pending.done.values()), metadata={UPSTREAM_COMMIT_KEY: commit})
        return partial, f

    # -- internals -----------------------------------------------------------------------

    async def _resolve(self, name: str, revision: str) -> tuple[str, str | None]:
        """(commit, tag or None): revalidating a moving ref against the upstream when due."""
        self.rules.check_repo(name)
        if COMMIT_RE.match(revision):
            return revision, None
        if self.rules.require_commit:
            raise BadInput(f"this mirror serves only revisions pinned by a 40-digit commit, not {revision!r}")
        key = (name, revision)
        known: str | None
        try:
            known = await asyncio.to_thread(self.catalogue.resolve_commit, name, revision)
        except NotFound:
            known = None
        if known is not None and self._clock() - self._checked.get(key, float("-inf")) < self.revalidate_s:
            return known, revision
        try:
            upstream = await self.hub.revision(name, revision)
        except UpstreamTimeout:
            if known is None:
                raise
            log.warning("upstream unreachable: %s@%s resolves to the last known commit %s", name, revision, known)
            STALE_REF.set(f"{revision}={known}; upstream {self.hub.url} unreachable, last known commit")
            return known, revision
        self._checked[key] = self._clock()
        self._pending.setdefault(upstream.commit, _Pending(upstream))
        if known is not None and known != upstream.commit:
            try:  # the ref moved to a commit already mirrored: move the tag only
                m = await asyncio.to_thread(self.catalogue.manifest_by_commit, upstream.commit)
                await asyncio.to_thread(
                    self.catalogue.publish,
                    m,
                    tag=revision,
                    is_stored=self.store.has,
                    source="mirrored",
                    upstream=self.hub.url,
                )
            except ModelNotFound:
                pass
        return upstream.commit, revision

    async def _pending_revision(self, name: str, commit: str) -> _Pending:
        pending = self._pending.get(commit)
        if pending is None:
            pending = self._pending.setdefault(commit, _Pending(await self.hub.revision(name, commit)))
        return pending

    async def _mirror_revision(self, name: str, commit: str, tag: str | None) -> ModelManifest:
        pending = await self._pending_revision(name, commit)
        for f in pending.revision.files:
            self.rules.check_file(name, f.path, f.size)
        # Two files at a time: large files stream while small ones complete.
        semaphore = asyncio.Semaphore(2)

        async def one(path: str) -> None:
            async with semaphore:
                await self._ensure_file(pending, path)

        await asyncio.gather(*(one(f.path) for f in pending.revision.files))
        manifest = ModelManifest(
            name,
            tuple(pending.done[f.path] for f in pending.revision.files),
            metadata={UPSTREAM_COMMIT_KEY: commit, "upstream": self.hub.url},
        )
        await asyncio.to_thread(
            self.catalogue.publish,
            manifest,
            tag=tag,
            is_stored=self.store.has,
            source="mirrored",
            upstream=self.hub.url,
        )
        self._pending.pop(commit, None)
        log.info("mirrored %s@%s from %s", name, commit, self.hub.url)
        return manifest

    async def _ensure_file(self, pending: _Pending, path: str) -> FileManifest:
        if path in pending.done:
            return pending.done[path]
        return await asyncio.shield(self._start_file(pending, path))

    def _start_file(self, pending: _Pending, path: str) -> "asyncio.Task[FileManifest]":
        """The one upstream transfer of a file (started now unless already under way)."""
        key = (pending.revision.commit, path)
        task = self._files.get(key)
        if task is None:
            pending.flights[path] = Flight(path, size=None, blake3=None)
            task = asyncio.create_task(self._mirror_file(pending, path))
            self._files[key] = task
            task.add_done_callback(lambda _t: self._files.pop(key, None))
        return task

    async def _mirror_file(self, pending: _Pending, path: str) -> FileManifest:
        flight = pending.flights[path]
        spool = self.spool_dir / f"{uuid.uuid4().hex}.part"
        try:
            f = await self._transfer(pending, path, flight, spool)
        except BaseException as e:
            await flight.finish(
                None,
                e
                if isinstance(e, CachenetError)
                else UpstreamTimeout(f"mirroring {path} from {self.hub.url} failed: {e!r}", upstream=self.hub.url),
            )
            spool.unlink(missing_ok=True)
            raise
        await flight.finish(spool, None)
        # Streaming readers opened the spool when they started; late ones get a minute.
        asyncio.get_running_loop().call_later(_SPOOL_LINGER_S, spool.unlink, True)
        return f

    async def _transfer(self, pending: _Pending, path: str, flight: Flight, spool: Path) -> FileManifest:
        rev = pending.revision
        entry = next((f for f in rev.files if f.path == path), None)
        if entry is None:
            raise NotFound(f"{rev.name}@{rev.commit[:12]} upstream has no file {path!r}", path=path)
        self.rules.check_file(rev.name, path, entry.size)
        cutter = StreamCutter(path=path, size=entry.size, max_block_size=self.max_block_size)
        batch: list[tuple[BlockRef, bytes]] = []
        batch_bytes = written = 0
        with open(spool, "wb") as out:
            await flight.begin_attempt(spool, entry.size, trusted=True)
            async for chunk in self.hub.stream(rev.name, rev.commit, path):
                await asyncio.to_thread(out.write, chunk)
                written += len(chunk)
                await asyncio.to_thread(out.flush)
                await flight.progress(written)
                for ref, block in cutter.feed(chunk):
                    batch.append((ref, block))
                    batch_bytes += ref.size
                if batch_bytes >= _BATCH_BYTES:
                    # Stored and recorded a batch at a time: one catalogue transaction per batch.
                    await asyncio.to_thread(store_blocks, self.store, self.catalogue, batch)
                    batch, batch_bytes = [], 0
        if batch:
            await asyncio.to_thread(store_blocks, self.store, self.catalogue, batch)
        f = cutter.finish()
        if entry.sha256 is not None and f.sha256 != entry.sha256:
            raise IntegrityError(
                f"upstream sent {rev.name}/{path} with SHA-256 {f.sha256}, its tree says {entry.sha256}",
                path=path,
            )
        pending.done[path] = f
        return f
