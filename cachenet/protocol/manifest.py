"""The manifest as a wire message: the shape a model revision's manifest has in JSON.

`cachenet.manifest.ModelManifest` is the model built from it (ordering, the revision derived
from the content, sizes that add up); this module says only what a well-formed document is,
so the decoder, the OpenAPI schema and the checks are one definition.
"""

from typing import Annotated, Any, Final, Literal

import msgspec

from cachenet.names import MAX_PATH_CHARS
from cachenet.protocol.patterns import MODEL_NAME, schema_pattern
from cachenet.protocol.types import Blake3, BlockId, Commit, PositiveInt

__all__ = ("BaseEntry", "BlockEntry", "FileEntry", "FileKind", "MANIFEST_FORMAT", "ManifestMessage", "Sha256")

MANIFEST_FORMAT: Final = "cachenet.manifest/1"
FileKind = Literal["safetensors", "raw"]
Sha256 = Annotated[str, msgspec.Meta(pattern=schema_pattern("[0-9a-f]{64}"), min_length=64, max_length=64)]
ModelName = Annotated[str, msgspec.Meta(pattern=schema_pattern(MODEL_NAME))]
FilePath = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
# One block as a file segment: [block id, BLAKE3 digest, length in bytes].
BlockEntry = tuple[BlockId, Blake3, PositiveInt]


class BaseEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The base model revision a LoRA model adds its adapter to."""

    name: ModelName
    revision: Commit


class FileEntry(msgspec.Struct, frozen=True):
    """One file: relative POSIX path, size, SHA-256 of the whole file, kind, blocks in file order."""

    path: FilePath
    size: NonNegativeInt
    sha256: Sha256
    blocks: list[BlockEntry]
    kind: FileKind = "raw"


class ManifestMessage(msgspec.Struct, frozen=True):
    """A model revision's manifest (canonical JSON on the wire: sorted keys, no spaces, UTF-8).

    `revision` is optional on input (a publisher may leave it out); when present it must be
    the one the content gives.
    """

    format: Literal["cachenet.manifest/1"]
    name: ModelName
    files: list[FileEntry]
    revision: Commit | None = None
    base: BaseEntry | None = None
    metadata: dict[str, Any] = {}
