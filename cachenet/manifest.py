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
from typing import Any, Final, Literal

from cachenet.blockid import validate_blake3, validate_block_id
from cachenet.errors import FileNotInModel, ManifestInvalid
from cachenet.names import COMMIT_RE, validate_file_path, validate_model_name

__all__ = (
    "BaseRef",
    "BlockRef",
    "FileManifest",
    "MANIFEST_FORMAT",
    "ModelManifest",
    "UPSTREAM_COMMIT_KEY",
    "canonical_json",
)

MANIFEST_FORMAT: Final = "cachenet.manifest/1"
UPSTREAM_COMMIT_KEY: Final = "upstream_commit"
MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024
FileKind = Literal["safetensors", "raw"]


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
        upstream_commit = self.metadata.get(UPSTREAM_COMMIT_KEY)
        if isinstance(upstream_commit, str) and COMMIT_RE.match(upstream_commit):
            object.__setattr__(self, "revision", upstream_commit)
        else:
            body = canonical_json(self._body())
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
            return _parse(doc)
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestInvalid(f"malformed manifest: {e!r}") from None
        except UnicodeError:  # a lone surrogate ("\ud800") cannot be written as UTF-8
            raise ManifestInvalid("manifest holds text that is not valid Unicode") from None
        except RecursionError:
            raise ManifestInvalid("manifest is nested too deeply") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> "ModelManifest":
        """Parse canonical (or any) JSON bytes."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid(f"manifest of {len(data)} bytes is over the {MAX_MANIFEST_BYTES} limit")
        try:
            doc = json.loads(data)
        # ValueError also covers integers over Python's digit limit; RecursionError deep nesting.
        except (ValueError, RecursionError) as e:
            raise ManifestInvalid(f"manifest is not JSON: {e}") from None
        return cls.from_json(doc)

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
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _parse(doc: object) -> ModelManifest:
    if not isinstance(doc, dict):
        raise ManifestInvalid("a manifest must be a JSON object")
    if doc.get("format") != MANIFEST_FORMAT:
        raise ManifestInvalid(f"unknown manifest format {doc.get('format')!r}; expected {MANIFEST_FORMAT}")
    base = None
    if doc.get("base") is not None:
        b = doc["base"]
        if not isinstance(b, dict) or not isinstance(b.get("revision"), str) or not COMMIT_RE.match(b["revision"]):
            raise ManifestInvalid("base must be {name, revision} with a 40-digit commit id")
        base = BaseRef(validate_model_name(b["name"]), b["revision"])
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ManifestInvalid("metadata must be an object")
    files = []
    for f in doc["files"]:
        if not isinstance(f, dict):
            raise ManifestInvalid("each file must be an object")
        size, sha = f["size"], f["sha256"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestInvalid(f"file size must be a non-negative integer, got {size!r}")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestInvalid(f"file sha256 must be 64 lowercase hex digits, got {str(sha)[:80]!r}")
        kind = f.get("kind", "raw")
        if kind not in ("safetensors", "raw"):
            raise ManifestInvalid(f"unknown file kind {kind!r}")
        refs = []
        for entry in f["blocks"]:
            if not isinstance(entry, list) or len(entry) != 3:
                raise ManifestInvalid("each block must be [block_id, blake3, length]")
            block_id, b3, length = entry
            if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
                raise ManifestInvalid(f"block length must be a positive integer, got {length!r}")
            refs.append(BlockRef(validate_block_id(block_id), validate_blake3(b3), length))
        files.append(FileManifest(validate_file_path(f["path"]), size, sha, tuple(refs), kind))
    manifest = ModelManifest(validate_model_name(doc["name"]), tuple(files), base, metadata)
    claimed = doc.get("revision")
    if claimed is not None and claimed != manifest.revision:
        raise ManifestInvalid(
            f"manifest claims revision {str(claimed)[:40]!r} but its content gives {manifest.revision}",
            model=manifest.name,
        )
    return manifest
