"""HTTP Range headers: one `bytes=` range, validated against the resource size."""

import re
from typing import Final

from cachenet.errors import RangeNotSatisfiable

__all__ = ("parse_range",)

_RANGE_RE: Final = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte range [start, end) a Range header selects, or None for the whole body.

    Multi-range and malformed headers are ignored (the whole body is served, as RFC 9110
    allows); a syntactically valid range outside the resource raises `RangeNotSatisfiable`.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:  # RFC 9110 §14.1.3: nothing to select in an empty body
            raise RangeNotSatisfiable(f"range {header!r} selects nothing", size=size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if not last or int(last) >= start:
        if start < size:
            return start, end
        raise RangeNotSatisfiable(f"range {header!r} starts past the {size}-byte body", size=size)
    return None
