"""The edge node server: the device API from its cache, node state, plans, metrics."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from cachenet.edge.cache import EdgeCache
from cachenet.edge.config import EdgeSettings
from cachenet.edge.demand import DemandStats
from cachenet.edge.keys import cache_key, demand_key, manifests_key, settings_key
from cachenet.edge.knowledge.routes import add_knowledge_routes
from cachenet.edge.manifests import ManifestCache
from cachenet.edge.metrics import EdgeMetrics
from cachenet.edge.multicast.hub import MulticastHub
from cachenet.edge.multicast.routes import add_multicast_routes, hub_key
from cachenet.edge.routes import add_node_routes
from cachenet.edge.source import EdgeSource
from cachenet.protocol.headers import REPAIR_HEADER
from cachenet.server.deviceapi import add_device_routes
from cachenet.server.metrics import metrics_handler
from cachenet.server.middlewares import client_limit_middleware, error_middleware
from cachenet.server.openapi import ApiDoc
from cachenet.server.pacer import TokenBucket
from cachenet.server.readiness import ReadinessProbe

__all__ = ("create_app", "sharing_saved_bytes")
log = logging.getLogger(__name__)


def create_app(settings: EdgeSettings) -> web.Application:
    """The edge node's aiohttp application."""
    app = web.Application(
        middlewares=[client_limit_middleware(settings.max_requests_per_client), error_middleware],
        client_max_size=64 * 1024 * 1024,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cache = EdgeCache(settings)
    manifests = ManifestCache(
        settings.data_dir / "manifests",
        origin_url=settings.origin_url,
        session=lambda: cache.session,
        ttl_s=settings.manifest_ttl_s,
        on_manifest=cache.on_manifest,
    )
    demand = DemandStats()
    app[settings_key] = settings
    app[cache_key] = cache
    app[manifests_key] = manifests
    app[demand_key] = demand
    cache.metrics.sharing_saved_bytes.set_function(lambda: sharing_saved_bytes(cache, manifests))
    pacer = TokenBucket(settings.egress_rate) if settings.egress_rate else None
    doc = ApiDoc(f"cachenet edge node {settings.node_id}")
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ReadinessProbe(cache.store).handle)
    app.router.add_get("/metrics", metrics_handler(cache.metrics.registry))
    app.router.add_get("/openapi.json", doc.handle)
    add_node_routes(app, doc)
    add_knowledge_routes(app, doc)
    add_multicast_routes(app, doc)
    if settings.multicast_group is not None:
        app[hub_key] = MulticastHub(settings, cache, manifests, cache.metrics, pacer)
    add_device_routes(app, EdgeSource(cache, manifests, demand, pacer), doc, on_sent=_egress_counter(cache.metrics))
    app.cleanup_ctx.append(_lifecycle)
    return app


def sharing_saved_bytes(cache: EdgeCache, manifests: ManifestCache) -> float:
    """Bytes the held models would take stored whole (a LoRA model with its base), minus bytes held."""
    held = cache.store.sizes()
    known = {m.revision: m for m in manifests.known()}
    whole = 0
    for m in known.values():
        blocks = dict(m.unique_blocks())
        base = known.get(m.base.revision) if m.base is not None else None
        if base is not None:
            blocks.update(base.unique_blocks())
        whole += sum(r.size for b, r in blocks.items() if b in held)
    return float(max(0, whole - cache.store.used_bytes))


def _egress_counter(metrics: EdgeMetrics) -> Callable[[web.Request, int], None]:
    unicast, repair = metrics.egress_bytes.labels("unicast"), metrics.egress_bytes.labels("repair")

    def count(request: web.Request, nbytes: int) -> None:
        (repair if REPAIR_HEADER in request.headers else unicast).inc(nbytes)

    return count


async def _healthz(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    store = request.app[cache_key].store
    return web.json_response(
        {
            "status": "ok",
            "role": "edge",
            "node_id": settings.node_id,
            "used_bytes": store.used_bytes,
            "capacity_bytes": settings.capacity_bytes,
        }
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    cache, settings = app[cache_key], app[settings_key]
    await cache.start()
    tasks = [asyncio.create_task(_save_state_periodically(app)), asyncio.create_task(cache.scrub_forever())]
    if settings.controller_url:
        tasks.append(asyncio.create_task(_refresh_lookup(app)))
    yield
    hub = app.get(hub_key)
    if hub is not None:
        await hub.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await cache.close()


async def _save_state_periodically(app: web.Application) -> None:
    cache, settings = app[cache_key], app[settings_key]
    while True:
        await asyncio.sleep(settings.state_save_interval_s)
        try:
            await asyncio.to_thread(cache.save_state)
        except OSError as e:
            log.warning("could not save the policy state: %s", e)


async def _refresh_lookup(app: web.Application) -> None:
    """Keep the controller's block → nodes table (which peer holds what)."""
    cache, settings = app[cache_key], app[settings_key]
    assert settings.controller_url is not None
    url = settings.controller_url.rstrip("/") + "/v1/lookup"
    reachable: bool | None = None  # logged on changes only: a controller starting later is normal
    while True:
        try:
            async with cache.session.get(url) as resp:
                if resp.status == 200:
                    doc = await resp.json()
                    cache.upstream.lookup = {str(k): [str(u) for u in v] for k, v in doc.get("blocks", {}).items()}
            if reachable is False:
                log.info("controller %s reachable again", settings.controller_url)
            reachable = True
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            if reachable is not False:
                level = logging.WARNING if reachable else logging.INFO
                why = str(e) or type(e).__name__
                log.log(level, "controller %s not reachable (%s); keeping the last lookup table", url, why)
            reachable = False
        await asyncio.sleep(settings.lookup_refresh_s)
