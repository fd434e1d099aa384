"""Device routes of multicast delivery: the announcement, joining, session state, leaving.

GET  /v1/multicast                              groups, port, interface, sessions under way
POST /v1/multicast/join                         {"model", "revision", "blocks": [...], "rate"?}
GET  /v1/multicast/sessions/{session}           state and sender progress (members poll it)
POST /v1/multicast/sessions/{session}/nack      {"member", "round", "missing": [[block seq, first piece, end piece]]}
POST /v1/multicast/sessions/{session}/leave     {"member", "expected_bytes", "missed_bytes"}
"""

import asyncio
from typing import Final, TypeVar

from aiohttp import web

from cachenet.edge.multicast.hub import MulticastHub
from cachenet.errors import BadInput, NotFound
from cachenet.names import validate_model_name, validate_revision
from cachenet.protocol.codec import decode_json
from cachenet.protocol.multicast import JoinRequest, LeaveRequest, NackRequest, SessionState
from cachenet.protocol.patterns import SESSION_ID, anchored
from cachenet.server.httpbody import message_response, read_body
from cachenet.server.openapi import ApiDoc

__all__ = ("add_multicast_routes", "hub_key")
T = TypeVar("T")

hub_key = web.AppKey("multicast_hub", MulticastHub)
MAX_JOIN_BYTES: Final = 4 * 1024 * 1024
MAX_REPORT_BYTES: Final = 256 * 1024  # NACK and leave bodies (8192 ranges fit)
# Bodies above this are parsed off the event loop (parsing costs in proportion to the size).
_PARSE_ON_LOOP_MAX_BYTES: Final = 64 * 1024
_SESSION_RE: Final = anchored(SESSION_ID)


def add_multicast_routes(app: web.Application, doc: ApiDoc) -> None:
    """Register /v1/multicast*; without a hub in `app[hub_key]` the node announces multicast as off."""
    r = app.router
    doc.route(
        r,
        "GET",
        "/v1/multicast",
        announcement,
        summary="Multicast groups, port and sessions of this node",
        schema={"type": "object", "required": ["enabled"]},
    )
    doc.route(
        r,
        "POST",
        "/v1/multicast/join",
        join,
        summary="Join multicast delivery of blocks: which come by multicast (and where), which by unicast",
        body=JoinRequest,
        schema={"type": "object", "required": ["member", "session", "multicast", "repair", "unicast"]},
    )
    doc.route(
        r,
        "GET",
        "/v1/multicast/sessions/{session}",
        session_state,
        summary="A session's state and progress",
        schema=SessionState,
    )
    doc.route(
        r,
        "POST",
        "/v1/multicast/sessions/{session}/nack",
        nack,
        summary="Report the pieces lacking after the main pass (sent again by multicast when several lack them)",
        body=NackRequest,
        schema=SessionState,
    )
    doc.route(
        r,
        "POST",
        "/v1/multicast/sessions/{session}/leave",
        leave,
        summary="Leave a session, reporting the multicast bytes expected and lost",
        body=LeaveRequest,
        schema=SessionState,
    )


def _hub(request: web.Request) -> MulticastHub:
    hub = request.app.get(hub_key)
    if hub is None:
        raise NotFound("multicast is off on this node")
    return hub


async def announcement(request: web.Request) -> web.Response:
    """GET /v1/multicast."""
    hub = request.app.get(hub_key)
    return web.json_response(hub.announcement() if hub is not None else {"enabled": False})


async def join(request: web.Request) -> web.Response:
    """POST /v1/multicast/join: waits for the batching window, then answers with this device's share."""
    hub = _hub(request)
    body = await _message(request, JoinRequest, limit=MAX_JOIN_BYTES)
    model, revision = validate_model_name(body.model), validate_revision(body.revision)
    return web.json_response(await hub.join(model, revision, body.blocks, body.rate, client=request.remote or ""))


async def session_state(request: web.Request) -> web.Response:
    """GET /v1/multicast/sessions/{session}."""
    hub = _hub(request)
    session = hub.session(_session_id(request))
    hub.touch(session, request.remote or "")
    return message_response(session.state_message())


async def nack(request: web.Request) -> web.Response:
    """POST /v1/multicast/sessions/{session}/nack."""
    hub = _hub(request)
    session = _session_id(request)
    hub.session(session)  # an unknown session is refused before its body is read
    body = await _message(request, NackRequest, limit=MAX_REPORT_BYTES)
    return web.json_response(hub.nack(session, body.member, body.missing, body.round))


async def leave(request: web.Request) -> web.Response:
    """POST /v1/multicast/sessions/{session}/leave."""
    hub = _hub(request)
    session = _session_id(request)
    body = await _message(request, LeaveRequest, limit=MAX_REPORT_BYTES)
    return web.json_response(
        hub.leave(session, body.member, expected_bytes=body.expected_bytes, missed_bytes=body.missed_bytes)
    )


def _session_id(request: web.Request) -> str:
    session = request.match_info["session"]
    if not _SESSION_RE.match(session):
        raise BadInput("a session id is 16 hex digits")
    return session


async def _message(request: web.Request, into: type[T], *, limit: int) -> T:
    raw = await read_body(request, limit=limit)
    what = f"{request.method} {request.path} body"
    if len(raw) <= _PARSE_ON_LOOP_MAX_BYTES:
        return decode_json(raw, into, what=what)
    # msgspec decodes several times faster than json, but a large body still leaves the loop.
    return await asyncio.to_thread(decode_json, raw, into, what=what)
