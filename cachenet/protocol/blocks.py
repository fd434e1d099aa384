"""Messages of the origin's operator API for blocks and revisions: what is missing, uploads, publishes."""

from typing import Annotated, Final

import msgspec

from cachenet.protocol.types import BlockId

__all__ = ("MAX_MISSING_QUERY_IDS", "MissingAnswer", "MissingQuery", "PublishAnswer", "UploadAnswer")

MAX_MISSING_QUERY_IDS: Final = 100_000


class MissingQuery(msgspec.Struct, frozen=True):
    """POST /v1/blocks/missing: which of these blocks does the origin lack?"""

    block_ids: Annotated[list[BlockId], msgspec.Meta(max_length=MAX_MISSING_QUERY_IDS)]


class MissingAnswer(msgspec.Struct, frozen=True):
    """The blocks of a `MissingQuery` the origin lacks."""

    missing: list[str]


class UploadAnswer(msgspec.Struct, frozen=True):
    """PUT /v1/blocks/{block_id}: the block is held; `stored` is False when it already was."""

    block_id: str
    stored: bool


class PublishAnswer(msgspec.Struct, frozen=True):
    """POST /v1/models/{name}/revisions: the revision recorded and the tag moved to it."""

    name: str
    revision: str
    tag: str
    total_bytes: int
    unique_bytes: int
    created: bool
