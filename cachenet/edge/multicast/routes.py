"""Device routes of multicast delivery: the announcement, joining, session state, leaving.

GET  /v1/multicast                              groups, port, interface, sessions under way
POST /v1/multicast/join                         {"model", "revision", "blocks": [...], "rate"?}
GET  /v1/multicast/sessions/{session}           state and sender progress (members poll it)
POST /v1/multicast/sessions/{session}/nack      {"member", "round", "missing": [[block seq, first piece, end piece]]}
POST /v1/multicast/sessions/{session}/leave     {"member", "expected_bytes", "missed_bytes"}
"""

import asyncio
import re
from typing import Any, Final

import msgspec
from aiohttp import web

from cachenet.edge.multicast.guard import MAX_NACK_RANGES
from cachenet.edge.multicast.hub import MulticastHub
from cachenet.errors import BadInput, NotFound
from cachenet.names import validate_model_name, validate_revision
from cachenet.server.httpbody import read_body
from cachenet.server.openapi import ApiDoc

__all__ = ("add_multicast_routes", "hub_key")

hub_key = web.AppKey("multicast_hub", MulticastHub)
MAX_JOIN_BYTES: Final = 4 * 1024 * 1024
MAX_JOIN_BLOCKS: Final = 65536  # block ids one join may name
MAX_REPORT_BYTES: Final = 256 * 1024  # NACK and leave bodies (8192 ranges fit)
# Bodies above this are parsed off the event loop (parsing costs in proportion to the size).
_PARSE_ON_LOOP_MAX_BYTES: Final = 64 * 1024
_HEX16_RE: Final = re.compile(r"^[0-9a-f]{16}\Z")  # session and member ids
_SESSION_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["session", "state", "group", "port", "cursor", "blocks"],
    "properties": {
        "session": {"type": "string"},
        "state": {"enum": ["waiting", "sending", "repairing", "done", "abandoned", "failed"]},
        "group": {"type": "string"},
        "port": {"type": "integer"},
        "cursor": {"type": "integer"},
        "blocks": {"type": "integer"},
        "members": {"type": "integer"},
    },
}
_JOIN_BODY: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["model", "blocks"],
    "properties": {
        "model": {"type": "string"},
        "revision": {"type": "string"},
        "blocks": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
        "rate": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
}


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
        body={"application/json": {"schema": _JOIN_BODY}},
        schema={"type": "object", "required": ["member", "session", "multicast", "repair", "unicast"]},
    )
    doc.route(
        r,
        "GET",
        "/v1/multicast/sessions/{session}",
        session_state,
        summary="A session's state and progress",
        schema=_SESSION_SCHEMA,
    )
    doc.route(
        r,
        "POST",
        "/v1/multicast/sessions/{session}/nack",
        nack,
        summary="Report the pieces lacking after the main pass (sent again by multicast when several lack them)",
        body={"application/json": {"schema": {"type": "object", "required": ["member", "missing"]}}},
        schema=_SESSION_SCHEMA,
    )
    doc.route(
        r,
        "POST",
        "/v1/multicast/sessions/{session}/leave",
        leave,
        summary="Leave a session, reporting the multicast bytes expected and lost",
        body={"application/json": {"schema": {"type": "object", "required": ["member"]}}},
        schema=_SESSION_SCHEMA,
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
    doc = await _json_object(request, limit=MAX_JOIN_BYTES)
    model = validate_model_name(_field(doc, "model", str))
    revision = validate_revision(_field(doc, "revision", str, default="main"))
    blocks = _field(doc, "blocks", list)
    if len(blocks) > MAX_JOIN_BLOCKS:
        raise BadInput(f"a join names at most {MAX_JOIN_BLOCKS} blocks, got {len(blocks)}")
    if not all(isinstance(b, str) for b in blocks):
        raise BadInput("blocks must be block ids")
    rate = doc.get("rate")
    if rate is not None:
        try:
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise TypeError
            rate = float(rate)
        except (TypeError, OverflowError):
            raise BadInput("rate must be a number of bytes/s") from None
    return web.json_response(await hub.join(model, revision, blocks, rate, client=request.remote or ""))


async def session_state(request: web.Request) -> web.Response:
    """GET /v1/multicast/sessions/{session}."""
    hub = _hub(request)
    session = hub.session(_session_id(request))
    hub.touch(session, request.remote or "")
    return web.json_response(session.to_json())


async def nack(request: web.Request) -> web.Response:
    """POST /v1/multicast/sessions/{session}/nack."""
    hub = _hub(request)
    session = _session_id(request)
    hub.session(session)  # an unknown session is refused before its body is read
    doc = await _json_object(request, limit=MAX_REPORT_BYTES)
    missing = _field(doc, "missing", list)
    if len(missing) > MAX_NACK_RANGES:
        raise BadInput(f"a NACK lists at most {MAX_NACK_RANGES} ranges, got {len(missing)}")
    if not all(isinstance(e, list) for e in missing):
        raise BadInput("missing must be a list of [block seq, first piece, end piece]")
    repair_round = _field(doc, "round", int, default=1)
    return web.json_response(hub.nack(session, _member(doc), missing, repair_round))


async def leave(request: web.Request) -> web.Response:
    """POST /v1/multicast/sessions/{session}/leave."""
    hub = _hub(request)
    session = _session_id(request)
    doc = await _json_object(request, limit=MAX_REPORT_BYTES)
    member = _member(doc)
    expected, missed = doc.get("expected_bytes", 0), doc.get("missed_bytes", 0)
    for v in (expected, missed):
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadInput("expected_bytes and missed_bytes must be integers")
    return web.json_response(hub.leave(session, member, expected_bytes=expected, missed_bytes=missed))


def _member(doc: dict[str, Any]) -> str:
    member = _field(doc, "member", str)
    if not _HEX16_RE.match(member):
        raise BadInput("member must be the 16 hex digits the join answered")
    return str(member)


def _session_id(request: web.Request) -> str:
    session = request.match_info["session"]
    if not _HEX16_RE.match(session):
        raise BadInput("a session id is 16 hex digits")
    return session


async def _json_object(request: web.Request, *, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit=limit)
    try:
        # msgspec parses several times faster than json (and a thread still holds the GIL).
        doc = (
            msgspec.json.decode(raw)
            if len(raw) <= _PARSE_ON_LOOP_MAX_BYTES
            else await asyncio.to_thread(msgspec.json.decode, raw)
        )
    except (ValueError, RecursionError, msgspec.DecodeError):
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise BadInput("the body must be a JSON object")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type, *, default: Any = None) -> Any:
    value = doc.get(key, default)
    if not isinstance(value, kind):
        raise BadInput(f"{key!r} must be a {kind.__name__}")
    return value
