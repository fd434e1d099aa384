"""Client-side HTTP helpers: typed errors from responses, sessions with explicit timeouts."""

import json
from typing import Final

import aiohttp

from cachenet.errors import CachenetError, error_from_payload

__all__ = ("DEFAULT_TIMEOUT", "auth_headers", "raise_for_status")

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=60)


async def raise_for_status(resp: aiohttp.ClientResponse) -> None:
    """Raise the typed cachenet error a server sent, for any status >= 400."""
    if resp.status < 400:
        return
    body = await resp.read()
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = {"message": f"HTTP {resp.status} from {resp.url}: {body[:200]!r}"}
    error: CachenetError = error_from_payload(resp.status, payload)
    raise error


def auth_headers(token: str | None) -> dict[str, str]:
    """`Authorization: Bearer` headers, or none without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}
