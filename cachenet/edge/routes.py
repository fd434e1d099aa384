"""Node routes of the edge: its state and demand (read-only) and the placement plan (operator)."""

from aiohttp import web

from cachenet.edge.keys import cache_key, demand_key, manifests_key, settings_key
from cachenet.errors import BadInput
from cachenet.manifest import BlockRef
from cachenet.protocol.codec import decode_json
from cachenet.protocol.node import ModelHolding, NodeDemand, NodeState, PlanProgress, PlanRequest
from cachenet.server.httpbody import message_response, read_body
from cachenet.server.middlewares import require_token
from cachenet.server.openapi import ApiDoc

__all__ = ("add_node_routes", "parse_plan")

MAX_PLAN_BYTES = 64 * 1024 * 1024


def add_node_routes(app: web.Application, doc: ApiDoc) -> None:
    """Register /v1/node/* on `app`."""
    r = app.router
    doc.route(
        r,
        "GET",
        "/v1/node/state",
        node_state,
        summary="Capacity, bytes used, pinned vs cached, per-model completeness",
        query={"blocks": {"type": "string", "enum": ["0", "1"]}},
        schema=NodeState,
    )
    doc.route(
        r,
        "GET",
        "/v1/node/demand",
        node_demand,
        summary="Decayed request counts per model revision and cell",
        schema=NodeDemand,
    )
    doc.route(
        r,
        "PUT",
        "/v1/node/plan",
        put_plan,
        operator=True,
        summary="Apply a placement plan: the blocks this node must hold",
        body=PlanRequest,
        responses={202: "accepted: the plan's blocks are pinned and missing ones are being fetched"},
        schema=PlanProgress,
    )
    doc.route(
        r, "GET", "/v1/node/plan", get_plan, summary="The plan being applied and its progress", schema=PlanProgress
    )


async def node_state(request: web.Request) -> web.Response:
    """GET /v1/node/state."""
    app = request.app
    cache, settings = app[cache_key], app[settings_key]
    store = cache.store
    held = store.sizes()
    models = []
    for m in app[manifests_key].latest().values():
        blocks = m.unique_blocks()
        have = sum(r.size for b, r in blocks.items() if b in held)
        total = sum(r.size for r in blocks.values())
        models.append(ModelHolding(m.name, m.revision, total, have, have == total, have / total if total else 1.0))
    pinned = cache.pinned_bytes()
    state = NodeState(
        node_id=settings.node_id,
        url=settings.url,
        policy=settings.policy,
        capacity_bytes=settings.capacity_bytes,
        used_bytes=store.used_bytes,
        pinned_bytes=pinned,
        cached_bytes=store.used_bytes - pinned,
        blocks=len(held),
        plan=cache.plan.progress(),
        models=sorted(models, key=lambda x: x.name),
        block_ids=sorted(held) if request.query.get("blocks") == "1" else None,
    )
    return message_response(state)


async def node_demand(request: web.Request) -> web.Response:
    """GET /v1/node/demand."""
    app = request.app
    return message_response(NodeDemand(app[settings_key].node_id, app[demand_key].snapshot()))


async def put_plan(request: web.Request) -> web.Response:
    """PUT /v1/node/plan {"plan_id": ..., "blocks": [[block_id, blake3, size], ...]}."""
    app = request.app
    require_token(request, app[settings_key].token)
    if request.content_length is not None and request.content_length > MAX_PLAN_BYTES:
        raise BadInput(f"plan is over {MAX_PLAN_BYTES} bytes")
    raw = await read_body(request, limit=MAX_PLAN_BYTES)
    plan_id, refs = parse_plan(raw)
    status = await app[cache_key].apply_plan(plan_id, refs)
    return message_response(status.progress(), status=202)


def parse_plan(raw: bytes) -> tuple[str, list[BlockRef]]:
    """The plan id and blocks of a plan body; raises `BadInput` (never anything else)."""
    if len(raw) > MAX_PLAN_BYTES:
        raise BadInput(f"plan is over {MAX_PLAN_BYTES} bytes")
    plan = decode_json(raw, PlanRequest, what="plan")
    return (plan.plan_id or "manual")[:64], [BlockRef(block_id, blake3, size) for block_id, blake3, size in plan.blocks]


async def get_plan(request: web.Request) -> web.Response:
    """GET /v1/node/plan."""
    return message_response(request.app[cache_key].plan.progress())
