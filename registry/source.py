"""The origin's `ModelSource`: manifests from the catalogue, blocks from the local store."""

import asyncio

from cachenet.blockid import validate_block_id
from cachenet.blockstore import BlockStore
from cachenet.manifest import FileManifest, ModelManifest
from cachenet.protocol.models import ModelEntry, RevisionEntry
from cachenet.server.deviceapi import LocalBlock, StreamingFile
from cachenet.server.filesend import Pacer
from registry.catalogue import Catalogue
from registry.mirror import Mirror

__all__ = ("OriginSource", "list_model_entries")


class OriginSource:
    """Serves every published model: it holds every block, so nothing is ever a miss."""

    pacer: Pacer | None = None

    def __init__(self, catalogue: Catalogue, store: BlockStore, *, mirror: Mirror | None = None) -> None:
        self.catalogue = catalogue
        self.store = store
        self.mirror = mirror

    async def list_models(self) -> list[ModelEntry]:
        """Every model, its tags and revisions, and the bytes its newest revision shares with others."""
        return await asyncio.to_thread(list_model_entries, self.catalogue)

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of a published (or, with an upstream, mirrored) revision or tag."""
        if self.mirror is not None:
            return await self.mirror.manifest(name, revision)
        return await asyncio.to_thread(self.catalogue.manifest, name, revision)

    async def resolve_file(
        self, name: str, revision: str, path: str
    ) -> tuple[ModelManifest, FileManifest | StreamingFile]:
        """A file of a revision; a mirror fetches only that file when the revision is new."""
        if self.mirror is not None:
            return await self.mirror.resolve_file(name, revision, path)
        manifest = await asyncio.to_thread(self.catalogue.manifest, name, revision)
        return manifest, manifest.file(path)

    async def open_block(
        self, block_id: str, *, blake3: str | None = None, model: str | None = None, only_if_cached: bool = False
    ) -> LocalBlock:
        """The stored block's file, with its BLAKE3 digest from the catalogue."""
        validate_block_id(block_id)
        path, size = self.store.path(block_id), self.store.size_of(block_id)
        if blake3 is None:
            known = await asyncio.to_thread(self.catalogue.known_blocks, [block_id])
            blake3 = known[block_id][0] if block_id in known else None
        return LocalBlock(path, size, blake3)

    def note_request(self, manifest: ModelManifest, f: FileManifest, *, cell: str | None) -> None:
        """The origin keeps no demand statistics (edge nodes do)."""


def list_model_entries(catalogue: Catalogue) -> list[ModelEntry]:
    """Every model, with `shared_bytes` of its newest revision."""
    out = []
    for m in catalogue.list_models():
        latest = m.tags.get("main") or (m.revisions[0].commit if m.revisions else None)
        revisions = [RevisionEntry(r.commit, r.total_size, r.base_commit, r.created_at) for r in m.revisions]
        shared = catalogue.bytes_shared_with_others(latest) if latest else 0
        out.append(ModelEntry(m.name, m.source, m.upstream, m.tags, revisions, shared))
    return out
