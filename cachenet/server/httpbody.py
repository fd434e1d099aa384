"""Request and response bodies: reading a body whole up to a limit, wire messages in and out."""

from typing import Any, TypeVar

from aiohttp import web

from cachenet.errors import BadInput
from cachenet.protocol.codec import decode_json, encode_json

__all__ = ("message_response", "query_int", "read_body", "read_message")

T = TypeVar("T")


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


async def read_message(request: web.Request, into: type[T], *, limit: int) -> T:
    """The request body as a validated message of type `into`; raises `BadInput`."""
    return decode_json(await read_body(request, limit=limit), into, what=f"{request.method} {request.path} body")


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; raises `BadInput` naming it and the range."""
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadInput(f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return value


def message_response(message: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose body is `message` (a Struct, or lists/dicts of them)."""
    return web.Response(body=encode_json(message), status=status, content_type="application/json", headers=headers)
