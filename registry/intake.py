"""Accepting blocks into the origin: refuse collisions, verify bytes, store, then record."""

from collections.abc import Iterable

from cachenet.blockstore import BlockStore
from cachenet.errors import HashCollision
from cachenet.manifest import BlockRef
from registry.catalogue import Catalogue

__all__ = ("check_no_collision", "missing_blocks", "store_block", "store_blocks")


def check_no_collision(catalogue: Catalogue, ref: BlockRef) -> None:
    """Raise `HashCollision` when the id is known with another BLAKE3 digest or size."""
    known = catalogue.known_blocks([ref.block_id]).get(ref.block_id)
    if known is not None and known != (ref.blake3, ref.size):
        raise HashCollision(
            f"block {ref.block_id} is already stored with a different BLAKE3 digest or size; "
            "refusing the colliding bytes",
            block_id=ref.block_id,
        )


def store_block(store: BlockStore, catalogue: Catalogue, ref: BlockRef, data: bytes | memoryview) -> bool:
    """Verify and store one whole block, then record it; True when its bytes were new."""
    check_no_collision(catalogue, ref)
    created = store.put(ref.block_id, data, blake3=ref.blake3)
    catalogue.record_block(ref.block_id, ref.blake3, ref.size)
    return created


def store_blocks(store: BlockStore, catalogue: Catalogue, blocks: list[tuple[BlockRef, bytes]]) -> None:
    """Verify and store several blocks, then record them in one catalogue transaction."""
    for ref, _ in blocks:
        check_no_collision(catalogue, ref)
    for ref, data in blocks:
        store.put(ref.block_id, data, blake3=ref.blake3)
    catalogue.record_blocks((ref.block_id, ref.blake3, ref.size) for ref, _ in blocks)


def missing_blocks(store: BlockStore, catalogue: Catalogue, block_ids: Iterable[str]) -> list[str]:
    """Ids the origin still needs: not on disk or not recorded in the catalogue."""
    ids = list(dict.fromkeys(block_ids))
    known = catalogue.known_blocks(ids)
    return [b for b in ids if b not in known or not store.has(b)]
