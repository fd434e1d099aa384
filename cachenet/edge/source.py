"""The edge node's `ModelSource`: manifests from the manifest cache, blocks from the block cache."""

import logging

import aiohttp

from cachenet.edge.cache import EdgeCache
from cachenet.edge.demand import DemandStats
from cachenet.edge.manifests import ManifestCache
from cachenet.httpclient import raise_for_status
from cachenet.manifest import FileManifest, ModelManifest
from cachenet.protocol.codec import decode_json
from cachenet.protocol.models import ModelEntry, ModelList, RevisionEntry
from cachenet.server.deviceapi import BlockHandle
from cachenet.server.filesend import Pacer

__all__ = ("EdgeSource",)
log = logging.getLogger(__name__)


class EdgeSource:
    """Serves the device API from the node's cache, fetching misses upstream."""

    def __init__(self, cache: EdgeCache, manifests: ManifestCache, demand: DemandStats, pacer: Pacer | None) -> None:
        self.cache = cache
        self.manifests = manifests
        self.demand = demand
        self.pacer = pacer

    async def list_models(self) -> list[ModelEntry]:
        """The origin's model list; the manifests this node knows when the origin is down."""
        url = self.cache.settings.origin_url.rstrip("/") + "/v1/models"
        try:
            async with self.cache.session.get(url) as resp:
                await raise_for_status(resp)
                return decode_json(await resp.read(), ModelList, what="the origin's model list").models
        except (aiohttp.ClientError, TimeoutError, OSError):
            log.warning("origin unreachable; listing the models this node knows")
            return [
                ModelEntry(
                    m.name,
                    "cached",
                    None,
                    {"main": m.revision},
                    [RevisionEntry(m.revision, m.total_size, m.base.revision if m.base else None, 0)],
                )
                for m in self.manifests.latest().values()
            ]

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """A manifest by commit or tag."""
        return await self.manifests.get(name, revision)

    async def resolve_file(self, name: str, revision: str, path: str) -> tuple[ModelManifest, FileManifest]:
        """A file of a revision, from its manifest."""
        manifest = await self.manifests.get(name, revision)
        return manifest, manifest.file(path)

    async def open_block(
        self, block_id: str, *, blake3: str | None = None, model: str | None = None, only_if_cached: bool = False
    ) -> BlockHandle:
        """A held block, or one fetched upstream."""
        handle = await self.cache.open_block(block_id, blake3=blake3, model=model, only_if_cached=only_if_cached)
        self.cache.metrics.bytes_served.inc(handle.size)
        return handle

    def note_request(self, manifest: ModelManifest, f: FileManifest, *, cell: str | None) -> None:
        """Count demand: a whole model's files add up to one request."""
        weight = f.size / manifest.total_size if manifest.total_size else 1.0
        self.demand.record(manifest.name, manifest.revision, cell=cell, weight=weight)
        self.cache.policy.record_request(manifest.name, weight=weight)
        if manifest.base is not None:
            # A LoRA model is useless without its base: its demand is the base's demand too.
            self.cache.policy.record_request(manifest.base.name, weight=weight)
