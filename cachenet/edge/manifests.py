"""Manifests cached at an edge node: commits forever, tags revalidated against the origin.

A manifest addressed by commit never changes (its revision is the hash of its content),
so it is kept for good, on disk too (`manifests/<commit>.json`), which lets a restarted
node serve without the origin. A tag is revalidated after `ttl_s` with a conditional
request (`If-None-Match: "<commit>"`): 304 keeps it, 200 moves it. When the origin cannot
be reached, the last known commit is served.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cachenet.atomicfile import atomic_write_bytes
from cachenet.errors import UpstreamUnavailable
from cachenet.httpclient import raise_for_status
from cachenet.manifest import ModelManifest
from cachenet.names import COMMIT_RE

__all__ = ("ManifestCache",)
log = logging.getLogger(__name__)


@dataclass
class _Tag:
    commit: str
    checked_at: float


class ManifestCache:
    """Manifests by commit and tags with a revalidation interval, backed by a folder."""

    def __init__(
        self,
        folder: Path,
        *,
        origin_url: str,
        session: Callable[[], aiohttp.ClientSession],
        ttl_s: float,
        on_manifest: Callable[[ModelManifest], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.origin_url = origin_url.rstrip("/")
        self._session = session
        self.ttl_s = ttl_s
        self._on_manifest = on_manifest
        self._clock = clock
        self._by_commit: dict[str, ModelManifest] = {}
        self._tags: dict[tuple[str, str], _Tag] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._load()

    def known(self) -> list[ModelManifest]:
        """Every manifest this node has seen."""
        return list(self._by_commit.values())

    def latest(self) -> dict[str, ModelManifest]:
        """Model name → manifest of its `main` tag (or any known revision)."""
        out: dict[str, ModelManifest] = {}
        for m in self._by_commit.values():
            out.setdefault(m.name, m)
        for (name, tag), t in self._tags.items():
            if tag == "main" and t.commit in self._by_commit:
                out[name] = self._by_commit[t.commit]
        return out

    async def get(self, name: str, revision: str) -> ModelManifest:
        """The manifest of `name` at a commit or tag; raises `ModelNotFound` or `UpstreamUnavailable`."""
        if COMMIT_RE.match(revision) and revision in self._by_commit:
            m = self._by_commit[revision]
            if m.name == name:
                return m
        key = (name, revision)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one revalidation per tag at a time
            tag = self._tags.get(key)
            if tag is not None and self._clock() - tag.checked_at < self.ttl_s:
                return self._by_commit[tag.commit]
            try:
                manifest = await self._fetch(name, revision, None if tag is None else tag.commit)
            except UpstreamUnavailable:
                if tag is not None:
                    log.warning("origin unreachable; serving %s@%s as last known %s", name, revision, tag.commit)
                    return self._by_commit[tag.commit]
                raise
            if not COMMIT_RE.match(revision):
                self._tags[key] = _Tag(manifest.revision, self._clock())
                self._save_tags()
            return manifest

    async def _fetch(self, name: str, revision: str, known_commit: str | None) -> ModelManifest:
        url = f"{self.origin_url}/v1/models/{name}/revisions/{revision}"
        headers = {"If-None-Match": f'"{known_commit}"'} if known_commit else {}
        try:
            async with self._session().get(url, headers=headers) as resp:
                if resp.status == 304 and known_commit:
                    return self._by_commit[known_commit]
                await raise_for_status(resp)
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise UpstreamUnavailable(f"origin {self.origin_url} is unreachable: {e}", upstream=self.origin_url) from e
        manifest = await asyncio.to_thread(ModelManifest.from_bytes, body)
        if manifest.name != name:
            raise UpstreamUnavailable(f"origin answered {manifest.name!r} for {name!r}", upstream=self.origin_url)
        self._remember(manifest, persist=True)
        return manifest

    def _remember(self, manifest: ModelManifest, *, persist: bool) -> None:
        if manifest.revision not in self._by_commit:
            self._by_commit[manifest.revision] = manifest
            if persist:
                atomic_write_bytes(self.folder / f"{manifest.revision}.json", manifest.to_bytes())
            self._on_manifest(manifest)

    def _save_tags(self) -> None:
        doc = [{"name": n, "tag": t, "commit": v.commit} for (n, t), v in self._tags.items()]
        atomic_write_bytes(self.folder / "tags.json", json.dumps(doc).encode())

    def _load(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            if path.name == "tags.json":
                continue
            try:
                manifest = ModelManifest.from_bytes(path.read_bytes())
            except Exception:  # a damaged cache file is dropped, the origin has the truth
                log.warning("dropping unreadable cached manifest %s", path)
                path.unlink(missing_ok=True)
                continue
            if manifest.revision == path.stem:
                self._remember(manifest, persist=False)
        tags_file = self.folder / "tags.json"
        if tags_file.exists():
            try:
                rows: list[dict[str, Any]] = json.loads(tags_file.read_text())
                for row in rows:
                    if row["commit"] in self._by_commit:
                        # Known but stale: revalidated on first use, served if the origin is down.
                        self._tags[(row["name"], row["tag"])] = _Tag(row["commit"], float("-inf"))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable %s", tags_file)
