"""Middlewares shared by every server: typed errors to JSON, a cap per client address, the operator token check."""

import hmac
import json
import logging
import math
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cachenet.errors import CachenetError, Unauthorized
from cachenet.protocol.headers import HF_ERROR_CODE_HEADER, HF_ERROR_MESSAGE_HEADER

__all__ = (
    "DEFAULT_MAX_REQUESTS_PER_CLIENT",
    "client_limit_middleware",
    "error_middleware",
    "json_error",
    "require_token",
)
log = logging.getLogger(__name__)

# Requests one client address may have in progress at once; beyond it, 503 with Retry-After.
DEFAULT_MAX_REQUESTS_PER_CLIENT: Final = 256
_BUSY_RETRY_AFTER_S: Final = 1


def json_error(error: CachenetError) -> web.Response:
    """The JSON response for a typed error: `{"error": name, "message": text, **attrs}`."""
    resp = web.json_response(error.to_payload(), status=error.status, dumps=_dumps)
    if error.hf_code is not None:
        # Hugging Face clients choose their exception class (RepositoryNotFoundError,
        # RevisionNotFoundError, EntryNotFoundError) from this header; HEAD answers have no body.
        resp.headers[HF_ERROR_CODE_HEADER] = error.hf_code
        resp.headers[HF_ERROR_MESSAGE_HEADER] = _header_text(error.message)
    size = error.attrs.get("size")
    if error.status == 416 and isinstance(size, int):
        resp.headers["Content-Range"] = f"bytes */{size}"
    if error.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="cachenet"'
    retry_after = error.attrs.get("retry_after_s")
    if isinstance(retry_after, int | float):
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map cachenet errors to their status with a JSON body; log anything unexpected as a 500."""
    try:
        return await handler(request)
    except CachenetError as e:
        return json_error(e)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            name = type(e).__name__.removeprefix("HTTP")
            return web.json_response({"error": name, "message": e.reason}, status=e.status, headers=_allowed(e))
        raise
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:  # the one place that catches everything: the error middleware
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.json_response({"error": "InternalError", "message": "internal server error"}, status=500)


def client_limit_middleware(max_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT) -> Middleware:
    """Refuse (503, Retry-After) a request from an address that already has `max_per_client` in progress.

    The table holds only addresses with a request in progress, so its size is bounded by
    the open connections, and an entry goes away with the address's last request.
    """
    active: dict[str, int] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = request.remote or ""
        n = active.get(client, 0)
        if n >= max_per_client:
            return web.json_response(
                {"error": "TooManyRequests", "message": f"{client} has {n} requests in progress; retry later"},
                status=503,
                headers={"Retry-After": str(_BUSY_RETRY_AFTER_S)},
            )
        active[client] = n + 1
        try:
            return await handler(request)
        finally:
            left = active[client] - 1
            if left:
                active[client] = left
            else:
                del active[client]

    return limit


def require_token(request: web.Request, token: str | None) -> None:
    """Raise `Unauthorized` unless the request carries `Authorization: Bearer <token>`.

    With no token configured every operator request is refused, so an operator API is
    never open by accident. The comparison takes constant time.
    """
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # A header that is not ASCII cannot hold the token (and must not become a 500).
    ok = (
        token is not None
        and given.isascii()
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.strip().encode(), token.encode())
    )
    if not ok:
        raise Unauthorized("this operator endpoint needs 'Authorization: Bearer <token>' with the operator token")


def _allowed(e: web.HTTPException) -> dict[str, str]:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _header_text(text: str) -> str:
    """`text` as one printable ASCII header line (names in messages may be anything)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean[:512]


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=str)
