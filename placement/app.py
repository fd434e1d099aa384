"""The controller server: recompute on request (or a timer), placement, lookup table, runs, dashboard."""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from cachenet.errors import BadInput
from cachenet.protocol.codec import decode_json
from cachenet.protocol.placement import CurrentPlacement, LookupTable, RecomputeRequest, RunList, TopologyView
from cachenet.server.httpbody import message_response, query_int, read_body
from cachenet.server.metrics import metrics_handler
from cachenet.server.middlewares import error_middleware, require_token
from cachenet.server.openapi import ApiDoc
from placement.config import ControllerSettings
from placement.controller import Controller
from placement.dashboard import Dashboard, add_dashboard_routes, describe_topology
from placement.metrics import controller_registry
from placement.solve import SOLVERS
from placement.topology import load_topology

__all__ = ("UNSAVED_RUNS_FILE", "controller_key", "create_app")
log = logging.getLogger(__name__)

MAX_RUNS_LISTED: Final = 100
UNSAVED_RUNS_FILE: Final = "unsaved-runs.json"

settings_key = web.AppKey("settings", ControllerSettings)
controller_key = web.AppKey("controller", Controller)


def create_app(settings: ControllerSettings) -> web.Application:
    """The controller's aiohttp application."""
    topology = load_topology(settings.topology)
    nodes = {s.id: f"http://127.0.0.1:{s.port}" for s in topology.servers if s.port}
    nodes.update(settings.node_map())
    app = web.Application(middlewares=[error_middleware])
    app[settings_key] = settings
    controller = Controller(
        topology,
        origin_url=settings.origin_url,
        node_urls=nodes,
        token=settings.token,
        spool_path=settings.data_dir / UNSAVED_RUNS_FILE,
        pace_links=settings.pace_links,
        relay_delivery=settings.relay_delivery,
    )
    app[controller_key] = controller
    doc = ApiDoc("cachenet placement controller")
    r = app.router
    r.add_get("/healthz", _healthz)
    r.add_get("/metrics", metrics_handler(controller_registry(controller)))
    r.add_get("/openapi.json", doc.handle)
    doc.route(
        r,
        "POST",
        "/v1/placement/recompute",
        recompute,
        operator=True,
        summary="Recompute the placement now and push plans to the nodes",
        body=RecomputeRequest,
        schema={"type": "object", "required": ["stored"], "properties": {"stored": {"type": "boolean"}}},
    )
    doc.route(
        r,
        "GET",
        "/v1/placement",
        current,
        summary="The current placement and last run",
        schema=CurrentPlacement,
    )
    doc.route(
        r,
        "GET",
        "/v1/runs",
        runs,
        summary="Recent placement runs, from the origin's catalogue",
        query={"limit": {"type": "integer", "minimum": 1, "maximum": MAX_RUNS_LISTED}},
        schema=RunList,
    )
    doc.route(
        r,
        "GET",
        "/v1/lookup",
        lookup,
        summary="Block id → URLs of the nodes that hold it (as they report), and of those fetching it",
        schema=LookupTable,
    )
    doc.route(
        r,
        "GET",
        "/v1/deliveries",
        deliveries,
        summary="Recent plans' deliveries: bytes per backhaul link planned vs measured, completion time",
        schema={"type": "object", "required": ["deliveries"], "properties": {"deliveries": {"type": "array"}}},
    )
    doc.route(
        r,
        "GET",
        "/v1/topology",
        topology_view,
        summary="Servers, links and users of the topology",
        schema=TopologyView,
    )
    app.cleanup_ctx.append(_lifecycle)
    # After _lifecycle, so that a simulation still running is cancelled before the session closes.
    add_dashboard_routes(app, doc, Dashboard(controller))
    return app


async def recompute(request: web.Request) -> web.Response:
    """POST /v1/placement/recompute {"solver": ...}."""
    settings = request.app[settings_key]
    require_token(request, settings.token)
    raw = await read_body(request, limit=64 * 1024) if request.can_read_body else b""
    body = decode_json(raw or b"{}", RecomputeRequest, what='body (a JSON object like {"solver": "trimcaching-gen"})')
    solver = body.solver or settings.solver
    if solver not in SOLVERS:
        raise BadInput(f"unknown solver {solver!r}; choose one of {', '.join(sorted(SOLVERS))}")
    controller = request.app[controller_key]
    summary = await controller.recompute(solver=solver)
    return web.json_response({**summary.to_json(), "stored": summary not in controller.unsaved})


async def current(request: web.Request) -> web.Response:
    """GET /v1/placement."""
    c = request.app[controller_key]
    last, _ = await c.recent_runs(limit=1)
    return message_response(
        CurrentPlacement(None if c.placement is None else c.placement.to_dict(), last[0] if last else None)
    )


async def runs(request: web.Request) -> web.Response:
    """GET /v1/runs?limit=N: newest first; `source` says whether the catalogue or memory answered."""
    limit = query_int(request, "limit", default=20, low=1, high=MAX_RUNS_LISTED)
    controller = request.app[controller_key]
    listed, source = await controller.recent_runs(limit=limit)
    return message_response(RunList(listed, source, len(controller.unsaved)))


async def lookup(request: web.Request) -> web.Response:
    """GET /v1/lookup."""
    controller = request.app[controller_key]
    return message_response(LookupTable(controller.lookup_table(), controller.holdings.fetching()))


async def deliveries(request: web.Request) -> web.Response:
    """GET /v1/deliveries: newest first."""
    listed = [d.to_json() for d in reversed(request.app[controller_key].deliveries)]
    return web.json_response({"deliveries": listed})


async def topology_view(request: web.Request) -> web.Response:
    """GET /v1/topology."""
    return message_response(describe_topology(request.app[controller_key]))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "role": "controller", "runs": len(request.app[controller_key].runs)})


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings, controller = app[settings_key], app[controller_key]
    await controller.load_unsaved()
    tasks = [asyncio.create_task(_refresh_holdings(app))]
    if settings.interval_s:
        tasks.append(asyncio.create_task(_periodic(app)))
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await controller.close()


async def _refresh_holdings(app: web.Application) -> None:
    """Keep the lookup table: read what each node holds now (its changes since the last read)."""
    settings, controller = app[settings_key], app[controller_key]
    while True:
        await controller.holdings.refresh(controller.session)
        await asyncio.sleep(settings.holdings_refresh_s)


async def _periodic(app: web.Application) -> None:
    settings, controller = app[settings_key], app[controller_key]
    assert settings.interval_s is not None
    while True:
        await asyncio.sleep(settings.interval_s)
        try:
            await controller.recompute(solver=settings.solver)
        except Exception as e:  # a failed periodic run is retried at the next tick
            log.warning("periodic recomputation failed: %r", e)
