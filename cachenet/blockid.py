"""Block ids (XXH3-128) and BLAKE3 digests: computing, checking and validating them."""

from dataclasses import dataclass
from typing import Final

import blake3 as _blake3
import xxhash

from cachenet.errors import BlockCorrupt, InvalidName
from cachenet.protocol.patterns import BLAKE3, BLOCK_ID, anchored

__all__ = (
    "BLAKE3_RE",
    "BLOCK_ID_RE",
    "BlockDigest",
    "BlockHasher",
    "digest_of",
    "validate_blake3",
    "validate_block_id",
)

BLOCK_ID_RE: Final = anchored(BLOCK_ID)
BLAKE3_RE: Final = anchored(BLAKE3)
# BLAKE3 parallelises over large inputs; below this size threads cost more than they save.
_BLAKE3_THREADED_MIN_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BlockDigest:
    """The two names of a block's bytes: its id (XXH3-128) and its BLAKE3 digest."""

    block_id: str
    blake3: str
    size: int


class BlockHasher:
    """Incremental XXH3-128 + BLAKE3 over a block that arrives in pieces."""

    __slots__ = ("_blake3", "_size", "_xxh")

    def __init__(self) -> None:
        self._xxh = xxhash.xxh3_128()
        self._blake3 = _blake3.blake3(max_threads=_blake3.blake3.AUTO)
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the block."""
        self._xxh.update(data)
        self._blake3.update(data)
        self._size += len(data)

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def digest(self) -> BlockDigest:
        """The id, BLAKE3 and size of everything fed so far."""
        return BlockDigest(self._xxh.hexdigest(), self._blake3.hexdigest(), self._size)

    def verify(self, block_id: str, blake3: str | None) -> BlockDigest:
        """Return the digest, or raise `BlockCorrupt` when it differs from the expected names."""
        got = self.digest()
        if got.block_id != block_id or (blake3 is not None and got.blake3 != blake3):
            raise BlockCorrupt(
                f"block {block_id}: the bytes hash to {got.block_id} / blake3 {got.blake3[:16]}…; refusing them",
                block_id=block_id,
            )
        return got


def digest_of(data: bytes | bytearray | memoryview) -> BlockDigest:
    """Hash one whole block held in memory."""
    threads = _blake3.blake3.AUTO if len(data) >= _BLAKE3_THREADED_MIN_BYTES else 1
    b3 = _blake3.blake3(data, max_threads=threads).hexdigest()
    return BlockDigest(xxhash.xxh3_128_hexdigest(data), b3, len(data))


def validate_block_id(block_id: str) -> str:
    """Return `block_id` if it is 32 lowercase hex digits, else raise `InvalidName`."""
    if not isinstance(block_id, str) or not BLOCK_ID_RE.match(block_id):
        raise InvalidName(
            f"invalid block id {str(block_id)[:80]!r}: expected 32 lowercase hex digits",
            name=str(block_id)[:80],
        )
    return block_id


def validate_blake3(digest: str) -> str:
    """Return `digest` if it is 64 lowercase hex digits, else raise `InvalidName`."""
    if not isinstance(digest, str) or not BLAKE3_RE.match(digest):
        raise InvalidName(
            f"invalid BLAKE3 digest {str(digest)[:80]!r}: expected 64 lowercase hex digits",
            name=str(digest)[:80],
        )
    return digest
