"""Patterns of the ids and names that arrive from the network, written once.

Each is an unanchored regular expression; `anchored` makes the validator's form (`\\Z`, not `$`:
"$" also matches before a trailing newline) and `schema_pattern` the JSON-schema form.
"""

import re
from typing import Final

__all__ = (
    "BLAKE3",
    "BLOCK_ID",
    "CELL_ID",
    "COMMIT",
    "MODEL_NAME",
    "REVISION",
    "ROUTE_COLLECTION",
    "ROUTE_MODEL_NAME",
    "SESSION_ID",
    "anchored",
    "schema_pattern",
)

BLOCK_ID: Final = r"[0-9a-f]{32}"  # XXH3-128 of the block's bytes
BLAKE3: Final = r"[0-9a-f]{64}"
COMMIT: Final = r"[0-9a-f]{40}"  # a revision id
SESSION_ID: Final = r"[0-9a-f]{16}"  # multicast sessions and members
CELL_ID: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"  # a device's cell (demand statistics), a topology user id
_NAME_PART: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
MODEL_NAME: Final = rf"{_NAME_PART}(?:/{_NAME_PART})?"
REVISION: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# What a route matches as a model or collection name before the name is validated (so a
# malformed name is a 422 naming the problem, not a 404).
_ROUTE_PART: Final = r"[A-Za-z0-9][A-Za-z0-9._-]*"
ROUTE_MODEL_NAME: Final = rf"{_ROUTE_PART}(?:/{_ROUTE_PART})?"
ROUTE_COLLECTION: Final = _ROUTE_PART


def anchored(pattern: str) -> re.Pattern[str]:
    """The compiled full-match form of a pattern."""
    return re.compile(rf"^(?:{pattern})\Z")


def schema_pattern(pattern: str) -> str:
    """The JSON-schema form of a pattern, valid in ECMA 262 and in Python's `re.search` (msgspec).

    `(?!\\n)` keeps Python's "$" from accepting a trailing newline; in ECMA it changes nothing.
    """
    return f"^(?:{pattern})$(?!\\n)"
