"""Range headers."""

import pytest

from cachenet.errors import RangeNotSatisfiable
from cachenet.ranges import parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=5-", (5, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=90-1000", (90, 100)),
        ("bytes=-1000", (0, 100)),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=9-3", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
