"""Middlewares shared by every server: typed errors to JSON, and the operator token check."""

import hmac
import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from cachenet.errors import CachenetError, Unauthorized

__all__ = ("error_middleware", "json_error", "require_token")
log = logging.getLogger(__name__)


def json_error(error: CachenetError) -> web.Response:
    """The JSON response for a typed error: `{"error": name, "message": text, **attrs}`."""
    resp = web.json_response(error.to_payload(), status=error.status, dumps=_dumps)
    if error.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="cachenet"'
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


def require_token(request: web.Request, token: str | None) -> None:
    """Raise `Unauthorized` unless the request carries `Authorization: Bearer <token>`.

    With no token configured every operator request is refused, so an operator API is
    never open by accident. The comparison takes constant time.
    """
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    ok = (
        token is not None and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
    )
    if not ok:
        raise Unauthorized("this operator endpoint needs 'Authorization: Bearer <token>' with the operator token")


def _allowed(e: web.HTTPException) -> dict[str, str]:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=str)
