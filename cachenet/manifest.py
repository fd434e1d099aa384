"""Model manifests: which blocks, in which order, make each file of a model revision.

Wire format (canonical JSON: sorted keys, no spaces, UTF-8):

    {
      "format": "cachenet.manifest/1",
      "name": "org/model",
      "revision": "<40 hex: first 160 bits of SHA-256 of this document without 'revision'>",
      "base": {"name": "org/base", "revision": "<40 hex>"} | null,
      "metadata": {...free-form JSON, e.g. "latency_s", "lora": {...}},
      "files": [
        {
          "path": "model.safetensors",          relative POSIX path
          "size": 90868376,
          "sha256": "<64 hex of the whole file>",
          "kind": "safetensors" | "raw",
          "blocks": [["<block id>", "<blake3>", <length>], ...]   in file order
        }
      ]
    }

The revision is derived from the content, so the same files published twice give the
same revision, and a manifest cannot be altered without changing its revision. A model
mirrored from an upstream hub keeps the upstream's commit id instead
(`metadata.upstream_commit`), because Hugging Face clients name snapshots by it.
"""

import bisect
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from cachenet.errors import FileNotInModel, ManifestInvalid
from cachenet.names import COMMIT_RE, validate_file_path, validate_model_name
from cachenet.protocol.manifest import MANIFEST_FORMAT, FileKind, ManifestMessage

__all__ = (
    "BaseRef",
    "BlockRef",
    "FileKind",
    "FileManifest",
    "MANIFEST_FORMAT",
    "ModelManifest",
    "UPSTREAM_COMMIT_KEY",
    "canonical_json",
)

UPSTREAM_COMMIT_KEY: Final = "upstream_commit"
MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block as a file segment: its id, BLAKE3 digest and length in bytes."""

    block_id: str
    blake3: str
    size: int


@dataclass(frozen=True, slots=True)
class BaseRef:
    """The base model revision a LoRA model adds its adapter to."""

    name: str
    revision: str


@dataclass(frozen=True, slots=True)
class FileManifest:
    """One file of a model: its size, SHA-256 and the blocks that make it, in order."""

    path: str
    size: int
    sha256: str
    blocks: tuple[BlockRef, ...]
    kind: FileKind = "raw"
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts, position = [], 0
        for ref in self.blocks:
            starts.append(position)
            position += ref.size
        object.__setattr__(self, "offsets", tuple(starts))
        if position != self.size:
            raise ManifestInvalid(
                f"file {self.path!r}: blocks add up to {position} bytes, the file has {self.size}",
                path=self.path,
            )

    def segments_in(self, start: int, end: int) -> Iterator[tuple[BlockRef, int, int]]:
        """Yield (block, start within block, end within block) covering file bytes [start, end)."""
        if start >= end:
            return
        i = max(0, bisect.bisect_right(self.offsets, start) - 1)
        while i < len(self.blocks) and self.offsets[i] < end:
            ref, offset = self.blocks[i], self.offsets[i]
            lo, hi = max(start, offset) - offset, min(end, offset + ref.size) - offset
            if hi > lo:
                yield ref, lo, hi
            i += 1


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """A model revision: its files, an optional base model and metadata."""

    name: str
    files: tuple[FileManifest, ...]
    base: BaseRef | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    revision: str = field(init=False)

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ManifestInvalid(f"model {self.name}: duplicate file paths", model=self.name)
        object.__setattr__(self, "files", tuple(sorted(self.files, key=lambda f: f.path)))
        try:
            body = canonical_json(self._body())
        except ValueError:  # NaN and infinity have no JSON form
            raise ManifestInvalid("manifest metadata holds a number JSON cannot write (NaN or infinity)") from None
        except UnicodeError:  # a lone surrogate ("\ud800") cannot be written as UTF-8
            raise ManifestInvalid("manifest holds text that is not valid Unicode") from None
        except RecursionError:
            raise ManifestInvalid("manifest is nested too deeply") from None
        upstream_commit = self.metadata.get(UPSTREAM_COMMIT_KEY)
        if isinstance(upstream_commit, str) and COMMIT_RE.match(upstream_commit):
            object.__setattr__(self, "revision", upstream_commit)
        else:
            object.__setattr__(self, "revision", hashlib.sha256(body).hexdigest()[:40])

    @property
    def total_size(self) -> int:
        """Bytes of all files together."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileManifest:
        """The file at `path`; raises `FileNotInModel`."""
        for f in self.files:
            if f.path == path:
                return f
        raise FileNotInModel(f"{self.name}@{self.revision[:12]} has no file {path!r}", path=path)

    def unique_blocks(self) -> dict[str, BlockRef]:
        """Block id → ref of every distinct block the model uses (its own files only)."""
        out: dict[str, BlockRef] = {}
        for f in self.files:
            for ref in f.blocks:
                out.setdefault(ref.block_id, ref)
        return out

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {**self._body(), "revision": self.revision}

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, doc: object) -> "ModelManifest":
        """Parse and validate a manifest; raises `ManifestInvalid` (or `InvalidName`)."""
        try:
            message = msgspec.convert(doc, ManifestMessage)
        except msgspec.ValidationError as e:
            raise ManifestInvalid(f"malformed manifest: {e}") from None
        except RecursionError:
            raise ManifestInvalid("manifest is nested too deeply") from None
        return _build(message)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ModelManifest":
        """Parse canonical (or any) JSON bytes."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid(f"manifest of {len(data)} bytes is over the {MAX_MANIFEST_BYTES} limit")
        try:
            message = _DECODER.decode(data)
        except msgspec.ValidationError as e:
            raise ManifestInvalid(f"malformed manifest: {e}") from None
        except (msgspec.DecodeError, RecursionError) as e:
            raise ManifestInvalid(f"manifest is not JSON: {e}") from None
        return _build(message)

    def _body(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "base": None if self.base is None else {"name": self.base.name, "revision": self.base.revision},
            "metadata": dict(self.metadata),
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "sha256": f.sha256,
                    "kind": f.kind,
                    "blocks": [[b.block_id, b.blake3, b.size] for b in f.blocks],
                }
                for f in self.files
            ],
        }


def canonical_json(doc: Any) -> bytes:
    """JSON with sorted keys and no whitespace, UTF-8 encoded."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _build(message: ManifestMessage) -> ModelManifest:
    """The model of a well-formed manifest: names and paths checked, sizes adding up, the revision its own."""
    base = None if message.base is None else BaseRef(message.base.name, message.base.revision)
    files = tuple(
        FileManifest(
            validate_file_path(f.path),
            f.size,
            f.sha256,
            tuple(BlockRef(block_id, b3, length) for block_id, b3, length in f.blocks),
            f.kind,
        )
        for f in message.files
    )
    manifest = ModelManifest(validate_model_name(message.name), files, base, message.metadata)
    if message.revision is not None and message.revision != manifest.revision:
        raise ManifestInvalid(
            f"manifest claims revision {message.revision!r} but its content gives {manifest.revision}",
            model=manifest.name,
        )
    return manifest


_DECODER: Final = msgspec.json.Decoder(ManifestMessage)
