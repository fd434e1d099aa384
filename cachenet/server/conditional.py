"""Conditional requests: `If-None-Match` as RFC 9110 §13.1.2 states it."""

__all__ = ("none_match_hits",)


def none_match_hits(header: str | None, etag: str) -> bool:
    """Whether `If-None-Match: header` matches the strong tag `etag` (so the answer is 304).

    `*` matches anything; otherwise the header is a comma-separated list of tags, compared
    weakly (`W/"x"` matches `"x"`), as the RFC asks for If-None-Match.
    """
    if not header:
        return False
    if header.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in header.split(","))
