"""The origin's `ModelSource`: manifests from the catalogue, blocks from the local store."""

import asyncio
from typing import Any

from cachenet.blockid import validate_block_id
from cachenet.blockstore import BlockStore
from cachenet.deviceapi import LocalBlock
from cachenet.filesend import Pacer
from cachenet.manifest import ModelManifest
from registry.catalogue import Catalogue

__all__ = ("OriginSource", "model_summary_json")


class OriginSource:
    """Serves every published model: it holds every block, so nothing is ever a miss."""

    pacer: Pacer | None = None

    def __init__(self, catalogue: Catalogue, store: BlockStore) -> None:
        self.catalogue = catalogue
        self.store = store

    async def list_models(self) -> list[dict[str, Any]]:
        """Every model, its tags and revisions."""
        models = await asyncio.to_thread(self.catalogue.list_models)
        return [model_summary_json(m) for m in models]

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of a published revision or tag."""
        return await asyncio.to_thread(self.catalogue.manifest, name, revision)

    async def open_block(self, block_id: str, *, blake3: str | None = None) -> LocalBlock:
        """The stored block's file."""
        validate_block_id(block_id)
        return LocalBlock(self.store.path(block_id), self.store.size_of(block_id))

    def note_request(self, manifest: ModelManifest, *, cell: str | None) -> None:
        """The origin keeps no demand statistics (edge nodes do)."""


def model_summary_json(m: Any) -> dict[str, Any]:
    """A `ModelSummary` as JSON."""
    return {
        "name": m.name,
        "source": m.source,
        "upstream": m.upstream,
        "tags": m.tags,
        "revisions": [
            {"commit": r.commit, "total_size": r.total_size, "base_commit": r.base_commit, "created_at": r.created_at}
            for r in m.revisions
        ],
    }
