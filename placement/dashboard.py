"""The operator dashboard: the page at `/`, the cluster view it polls and the capacity simulation.

The page (static/dashboard.{html,js,css}, no build step) reads only the controller's own
JSON routes: `/v1/cluster` aggregates every node's `/v1/node/state` and hit/miss counters
(read from its Prometheus `/metrics`) server-side, so the browser needs no CORS; which models
are complete on a node is computed here from the blocks it holds and the origin's manifests
(a node knows only the manifests devices asked it for); runs come
from `/v1/runs`, the hit ratio vs capacity curves from `/v1/simulation` (computed once per
placement run, off the event loop).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cachenet.errors import CachenetError
from cachenet.httpclient import raise_for_status
from cachenet.protocol.placement import TopologyLink, TopologyServer, TopologyUser, TopologyView
from cachenet.server.openapi import ApiDoc
from placement.controller import Controller
from placement.topology import ServerInfo

__all__ = (
    "Dashboard",
    "STATIC_DIR",
    "add_dashboard_routes",
    "dashboard_key",
    "describe_topology",
)
log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
NODE_TIMEOUT: Final = aiohttp.ClientTimeout(total=3, connect=2)
ORIGIN_TIMEOUT_S: Final = 5.0
MODELS_TTL_S: Final = 15.0
BLOCK_REQUESTS_SAMPLE: Final = "cachenet_edge_block_requests_total"
_NODE_ERRORS: Final = (
    aiohttp.ClientError,
    TimeoutError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    CachenetError,
)


def describe_topology(controller: Controller) -> TopologyView:
    """Servers (with their URLs), links and users of the controller's topology."""
    t = controller.topology
    return TopologyView(
        name=t.name,
        origin=t.origin,
        nodes=list(t.nodes),
        servers=[
            TopologyServer(s.id, s.capacity_bytes, list(s.position), controller.node_urls.get(s.id)) for s in t.servers
        ],
        links=[TopologyLink(link.a, link.b, link.rate_bps) for link in t.links],
        users=[TopologyUser(u.id, u.server, list(u.position)) for u in t.users],
    )


class Dashboard:
    """What the page shows: node states gathered from the nodes, and the cached simulation."""

    def __init__(self, controller: Controller, *, clock: Callable[[], float] = time.time) -> None:
        self.controller = controller
        self._clock = clock
        self._simulation: tuple[int, asyncio.Task[dict[str, Any]]] | None = None
        self._models: tuple[float, dict[str, dict[str, int]]] | None = None

    async def cluster(self) -> dict[str, Any]:
        """Topology, each node's state, counts and complete models (or its error), totals."""
        c = self.controller
        (models, origin_error), fetched = await asyncio.gather(
            self._catalogue_models(), asyncio.gather(*(self._node(s) for s in c.topology.servers))
        )
        nodes = []
        for entry, held in fetched:
            if held is not None:
                entry["models"] = _completeness(models, held) if models is not None else entry["models"]
            nodes.append(entry)
        up = [n for n in nodes if n["ok"]]
        names = set(models or ()) | {m["name"] for n in up for m in n["models"]}
        return {
            "generated_at": self._clock(),
            "origin": {"url": c.origin_url, "ok": origin_error is None, "error": origin_error},
            "origin_url": c.origin_url,
            "topology": msgspec.to_builtins(describe_topology(c)),
            "nodes": nodes,
            "models": sorted(names),
            "totals": {
                "nodes_up": len(up),
                "nodes": len(nodes),
                "hits": sum(n["hits"] for n in up),
                "misses": sum(n["misses"] for n in up),
                "used_bytes": sum(n["used_bytes"] for n in up),
                "capacity_bytes": sum(n["capacity_bytes"] for n in up),
            },
        }

    async def simulation(self) -> dict[str, Any]:
        """Hit ratio vs capacity, TrimCaching and the independent baseline, once per run."""
        c = self.controller
        run_id = c.runs[-1].run_id if c.runs else 0
        if self._simulation is None or self._simulation[0] != run_id:
            self._simulation = (run_id, asyncio.create_task(c.simulate()))
        key, task = self._simulation
        try:
            result = await asyncio.shield(task)
        except Exception:
            if self._simulation is not None and self._simulation[1] is task:
                self._simulation = None  # try again at the next request
            raise
        if not result.get("available"):
            self._simulation = None  # nothing published yet: look again next time
        return {**result, "run_id": key or None}

    async def close(self) -> None:
        """Cancel a simulation still running."""
        if self._simulation is not None:
            task = self._simulation[1]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _catalogue_models(self) -> tuple[dict[str, dict[str, int]] | None, str | None]:
        """Every model's blocks (cached for MODELS_TTL_S), and the origin's error if any."""
        now = self._clock()
        if self._models is not None and now - self._models[0] < MODELS_TTL_S:
            return self._models[1], None
        try:
            async with asyncio.timeout(ORIGIN_TIMEOUT_S):
                models = await self.controller.catalogue_models()
        except _NODE_ERRORS as e:
            log.warning("origin %s unreachable for the dashboard: %r", self.controller.origin_url, e)
            last = self.controller.last_inputs
            return (last.models if last is not None else None), f"unreachable: {_describe(e)}"
        self._models = (now, models)
        return models, None

    async def _node(self, server: ServerInfo) -> tuple[dict[str, Any], set[str] | None]:
        """The node's state and counters for the page, and the blocks it holds (None: down)."""
        url = self.controller.node_urls.get(server.id)
        entry: dict[str, Any] = {
            "id": server.id,
            "url": url,
            "ok": False,
            "capacity_bytes": server.capacity_bytes,
            "topology_capacity_bytes": server.capacity_bytes,
        }
        if url is None:
            entry["error"] = "no URL known for this server (give the controller --node ID=URL)"
            return entry, None
        session = self.controller.session
        answers: tuple[Any, Any] = await asyncio.gather(
            _get(session, f"{url}/v1/node/state?blocks=1", as_json=True),
            _get(session, f"{url}/metrics", as_json=False),
            return_exceptions=True,
        )
        state, metrics = answers
        try:
            if isinstance(state, BaseException):
                raise state
            if isinstance(metrics, BaseException):
                raise metrics
            counts = _request_counts(str(metrics))
            plan = state.get("plan") or {}
            held = set(state.get("block_ids") or ())
            entry.update(
                ok=True,
                node_id=state["node_id"],
                policy=state.get("policy"),
                capacity_bytes=int(state["capacity_bytes"]),
                used_bytes=int(state["used_bytes"]),
                pinned_bytes=int(state["pinned_bytes"]),
                cached_bytes=int(state["cached_bytes"]),
                blocks=int(state["blocks"]),
                plan={k: plan.get(k) for k in ("plan_id", "state", "blocks", "bytes", "fetched")},
                models=[
                    {k: m.get(k) for k in ("name", "bytes", "held_bytes", "complete", "fraction")}
                    for m in state.get("models") or []
                    if m.get("held_bytes")
                ],
                hits=counts.get("hit", 0),
                misses=counts.get("miss", 0),
            )
        except _NODE_ERRORS as e:
            log.warning("node %s (%s) unreachable for the dashboard: %r", server.id, url, e)
            entry["error"] = f"unreachable: {_describe(e)}"
            return entry, None
        return entry, held


dashboard_key = web.AppKey("dashboard", Dashboard)


def add_dashboard_routes(app: web.Application, doc: ApiDoc, dashboard: Dashboard) -> None:
    """Register the page (`/`, `/dashboard`, `/static/`) and its JSON routes on `app`."""
    app[dashboard_key] = dashboard
    r = app.router
    doc.route(r, "GET", "/", page, summary="The operator dashboard (HTML)", content="text/html")
    doc.route(
        r,
        "GET",
        "/dashboard",
        dashboard_page,
        summary="The operator dashboard (HTML)",
        content="text/html",
    )
    r.add_static("/static/", STATIC_DIR)
    doc.route(
        r,
        "GET",
        "/v1/cluster",
        cluster,
        summary="Topology, every node's state and hit/miss counts",
        schema={
            "type": "object",
            "required": ["origin", "topology", "nodes", "models", "totals"],
            "properties": {
                "nodes": {"type": "array"},
                "models": {"type": "array"},
                "totals": {"type": "object"},
                "topology": {"type": "object"},
            },
        },
    )
    doc.route(
        r,
        "GET",
        "/v1/simulation",
        simulation,
        summary="Expected hit ratio vs per-server capacity, TrimCaching and independent",
    )
    app.cleanup_ctx.append(_close)


async def page(request: web.Request) -> web.FileResponse:
    """GET / and /dashboard."""
    return web.FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})


async def dashboard_page(request: web.Request) -> web.FileResponse:
    """GET /dashboard."""
    return await page(request)


async def cluster(request: web.Request) -> web.Response:
    """GET /v1/cluster."""
    return web.json_response(await request.app[dashboard_key].cluster())


async def simulation(request: web.Request) -> web.Response:
    """GET /v1/simulation."""
    return web.json_response(await request.app[dashboard_key].simulation())


async def _get(session: aiohttp.ClientSession, url: str, *, as_json: bool) -> Any:
    async with session.get(url, timeout=NODE_TIMEOUT) as resp:
        await raise_for_status(resp)
        return await resp.json() if as_json else await resp.text()


def _completeness(models: dict[str, dict[str, int]], held: set[str]) -> list[dict[str, Any]]:
    """Per model with any block on the node: bytes held and whether every block is there."""
    out = []
    for name, blocks in sorted(models.items()):
        total = sum(blocks.values())
        have = sum(size for b, size in blocks.items() if b in held)
        if have:
            out.append(
                {
                    "name": name,
                    "bytes": total,
                    "held_bytes": have,
                    "complete": have == total,
                    "fraction": have / total if total else 1.0,
                }
            )
    return out


def _request_counts(text: str) -> dict[str, float]:
    """result → block requests, from a node's Prometheus text."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == BLOCK_REQUESTS_SAMPLE:
                result = sample.labels.get("result", "")
                counts[result] = counts.get(result, 0.0) + sample.value
    return counts


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {NODE_TIMEOUT.total:g} s"
    return (str(e) or type(e).__name__)[:200]


async def _close(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[dashboard_key].close()
