"""Reading a request body whole, up to a limit, refusing anything bigger before it is all read."""

from aiohttp import web

from cachenet.errors import BadInput

__all__ = ("read_body",)


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The whole body, or `BadInput` when its Content-Length or its bytes exceed `limit`.

    `StreamReader.read(n)` returns what has arrived so far, not n bytes, so one call would
    truncate any body larger than a TCP read.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BadInput(f"body of {request.content_length} bytes is over the {limit}-byte limit")
    data = bytearray()
    while len(data) <= limit:
        chunk = await request.content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) > limit:
        raise BadInput(f"body is over the {limit}-byte limit")
    return bytes(data)
