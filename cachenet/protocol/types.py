"""Constrained field types shared by wire messages (ids, digests, names), with their JSON-schema patterns.

msgspec checks patterns with `re.search`; `schema_pattern` keeps "$" from accepting a trailing newline.
"""

from typing import Annotated, Final

import msgspec

from cachenet.protocol.patterns import BLAKE3, BLOCK_ID, COMMIT, schema_pattern

__all__ = (
    "Blake3",
    "BlockId",
    "Commit",
    "MAX_TEXT_CHARS",
    "PositiveInt",
    "ShortText",
)

MAX_TEXT_CHARS: Final = 256

BlockId = Annotated[str, msgspec.Meta(pattern=schema_pattern(BLOCK_ID), min_length=32, max_length=32)]
Blake3 = Annotated[str, msgspec.Meta(pattern=schema_pattern(BLAKE3), min_length=64, max_length=64)]
Commit = Annotated[str, msgspec.Meta(pattern=schema_pattern(COMMIT), min_length=40, max_length=40)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
ShortText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
