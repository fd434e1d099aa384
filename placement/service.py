"""The controller server: recompute on request (or a timer), current placement, lookup table, runs."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cachenet.atomicfile import atomic_write_bytes
from cachenet.errors import BadInput
from cachenet.metrics import metrics_handler
from cachenet.middlewares import error_middleware, require_token
from cachenet.openapi import ApiDoc
from placement.config import ControllerSettings
from placement.controller import Controller
from placement.solve import SOLVERS
from placement.topology import load_topology

__all__ = ("controller_key", "create_app")
log = logging.getLogger(__name__)

settings_key = web.AppKey("settings", ControllerSettings)
controller_key = web.AppKey("controller", Controller)


def create_app(settings: ControllerSettings) -> web.Application:
    """The controller's aiohttp application."""
    topology = load_topology(settings.topology)
    nodes = {s.id: f"http://127.0.0.1:{s.port}" for s in topology.servers if s.port}
    nodes.update(settings.node_map())
    app = web.Application(middlewares=[error_middleware])
    app[settings_key] = settings
    app[controller_key] = Controller(topology, origin_url=settings.origin_url, node_urls=nodes, token=settings.token)
    doc = ApiDoc("cachenet placement controller")
    r = app.router
    from prometheus_client import CollectorRegistry

    r.add_get("/healthz", _healthz)
    r.add_get("/metrics", metrics_handler(CollectorRegistry()))
    r.add_get("/openapi.json", doc.handle)
    doc.route(r, "POST", "/v1/placement/recompute", recompute, operator=True,
              summary="Recompute the placement now and push plans to the nodes",
              body={"application/json": {"schema": {"type": "object", "properties": {
                  "solver": {"type": "string", "enum": sorted(SOLVERS)}}}}})
    doc.route(r, "GET", "/v1/placement", current, summary="The current placement and last run")
    doc.route(r, "GET", "/v1/runs", runs, summary="Recent placement runs")
    doc.route(r, "GET", "/v1/lookup", lookup, summary="Block id → URLs of the nodes that hold it")
    doc.route(r, "GET", "/v1/topology", topology_view, summary="Servers, links and users of the topology")
    app.cleanup_ctx.append(_lifecycle)
    return app


async def recompute(request: web.Request) -> web.Response:
    """POST /v1/placement/recompute {"solver": ...}."""
    settings = request.app[settings_key]
    require_token(request, settings.token)
    body: dict[str, Any] = {}
    if request.can_read_body:
        try:
            body = json.loads(await request.content.read(64 * 1024) or b"{}")
        except ValueError:
            raise BadInput("body must be JSON like {\"solver\": \"trimcaching-gen\"}") from None
    solver = str(body.get("solver") or settings.solver)
    if solver not in SOLVERS:
        raise BadInput(f"unknown solver {solver!r}; choose one of {', '.join(sorted(SOLVERS))}")
    summary = await request.app[controller_key].recompute(solver=solver)
    _save_runs(request.app)
    return web.json_response(summary.to_json())


async def current(request: web.Request) -> web.Response:
    """GET /v1/placement."""
    c = request.app[controller_key]
    return web.json_response({
        "placement": None if c.placement is None else c.placement.to_dict(),
        "last_run": c.runs[-1].to_json() if c.runs else None,
    })


async def runs(request: web.Request) -> web.Response:
    """GET /v1/runs."""
    return web.json_response({"runs": [r.to_json() for r in reversed(request.app[controller_key].runs[-20:])]})


async def lookup(request: web.Request) -> web.Response:
    """GET /v1/lookup."""
    return web.json_response({"blocks": request.app[controller_key].lookup_table()})


async def topology_view(request: web.Request) -> web.Response:
    """GET /v1/topology."""
    c = request.app[controller_key]
    t = c.topology
    return web.json_response({
        "name": t.name,
        "servers": [{"id": s.id, "capacity_bytes": s.capacity_bytes, "position": list(s.position),
                     "url": c.node_urls.get(s.id)} for s in t.servers],
        "links": [{"a": link.a, "b": link.b, "rate_bps": link.rate_bps} for link in t.links],
        "users": [{"id": u.id, "server": u.server} for u in t.users],
    })


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "role": "controller", "runs": len(request.app[controller_key].runs)})


def _save_runs(app: web.Application) -> None:
    c, settings = app[controller_key], app[settings_key]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(settings.data_dir / "runs.json", json.dumps([r.to_json() for r in c.runs[-100:]]).encode())


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings, controller = app[settings_key], app[controller_key]
    task = asyncio.create_task(_periodic(app)) if settings.interval_s else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await controller.close()


async def _periodic(app: web.Application) -> None:
    settings, controller = app[settings_key], app[controller_key]
    assert settings.interval_s is not None
    while True:
        await asyncio.sleep(settings.interval_s)
        try:
            await controller.recompute(solver=settings.solver)
            _save_runs(app)
        except Exception as e:  # a failed periodic run is retried at the next tick
            log.warning("periodic recomputation failed: %r", e)
