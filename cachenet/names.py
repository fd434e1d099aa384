"""Validation of names that arrive from the network: model names, revisions, file paths."""

import re
from typing import Final

from cachenet.errors import InvalidName
from cachenet.protocol.patterns import CELL_ID, COMMIT, MODEL_NAME, REVISION, anchored

__all__ = (
    "COMMIT_RE",
    "parse_cell",
    "parse_model_ref",
    "validate_file_path",
    "validate_model_name",
    "validate_revision",
)

_MODEL_NAME_RE: Final = anchored(MODEL_NAME)
_REVISION_RE: Final = anchored(REVISION)
COMMIT_RE: Final = anchored(COMMIT)
_CELL_RE: Final = anchored(CELL_ID)
# No control characters (C0, DEL, C1), line or paragraph separators: every download of such
# a name failed (a header cannot carry it), so it is refused when published (issue 14).
_PATH_PART_RE: Final = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029/\\:*?\"<>|\ud800-\udfff]{1,255}\Z")
MAX_PATH_CHARS: Final = 1024


def parse_cell(value: str | None) -> str | None:
    """A device's cell id from its request header, or None when absent or malformed.

    A malformed cell is ignored rather than refused: demand statistics are advisory, and a
    download must not fail over them.
    """
    if value is None or not _CELL_RE.match(value):
        return None
    return value


def validate_model_name(name: str) -> str:
    """Return a model name like `org/model` or `model`, or raise `InvalidName`."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {str(name)[:100]!r}: use 'org/name' with letters, digits, '.', '_' or '-'",
            name=str(name)[:100],
        )
    return name


def validate_revision(revision: str) -> str:
    """Return a tag or commit id, or raise `InvalidName`."""
    if not isinstance(revision, str) or not _REVISION_RE.match(revision) or ".." in revision:
        raise InvalidName(
            f"invalid revision {str(revision)[:100]!r}: use a tag (letters, digits, '.', '_', '-') "
            "or a 40-digit commit id",
            name=str(revision)[:100],
        )
    return revision


def validate_file_path(path: str) -> str:
    """Return a relative POSIX path inside a model folder, or raise `InvalidName`.

    Refuses absolute paths, `..` and `.` components, backslashes, drive letters and
    control characters, so that a path from the network can never leave the folder.
    """
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or path.startswith("/"):
        raise InvalidName(f"invalid file path {str(path)[:100]!r}", name=str(path)[:100])
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PATH_PART_RE.match(part):
            raise InvalidName(f"invalid file path {path[:100]!r}: components must be plain names", name=path[:100])
    return path


def parse_model_ref(ref: str, *, default_revision: str = "main") -> tuple[str, str]:
    """Split `NAME[@REV]` into a validated (name, revision)."""
    name, _, revision = ref.partition("@")
    return validate_model_name(name), validate_revision(revision or default_revision)
