"""The origin server: every published block and manifest, the device API and the operator API."""

import asyncio
import os
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge

from cachenet.blockstore import BlockStore
from cachenet.protocol.headers import STALE_REF_HEADER
from cachenet.server.deviceapi import add_device_routes
from cachenet.server.metrics import metrics_handler
from cachenet.server.middlewares import client_limit_middleware, error_middleware
from cachenet.server.openapi import ApiDoc
from cachenet.server.readiness import ReadinessProbe
from registry.catalogue import Catalogue
from registry.config import OriginSettings
from registry.keys import catalogue_key, settings_key, store_key
from registry.knowledge.routes import add_knowledge_routes
from registry.mirror import STALE_REF, Mirror, MirrorRules, UpstreamHub
from registry.routes import add_operator_routes
from registry.source import OriginSource

__all__ = ("create_app",)


def create_app(settings: OriginSettings) -> web.Application:
    """The origin's aiohttp application."""
    app = web.Application(
        middlewares=[client_limit_middleware(settings.max_requests_per_client), error_middleware],
        client_max_size=64 * 1024 * 1024,
    )
    app[settings_key] = settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = BlockStore(settings.data_dir / "store", fsync=settings.fsync)
    catalogue = Catalogue(settings.database_url)
    app[store_key] = store
    app[catalogue_key] = catalogue
    registry = CollectorRegistry()
    Gauge("cachenet_store_used_bytes", "Bytes held by complete blocks", registry=registry).set_function(
        lambda: store.used_bytes
    )
    Gauge("cachenet_store_blocks", "Blocks in the store", registry=registry).set_function(lambda: len(store))
    app.middlewares.append(_request_counter(registry))

    doc = ApiDoc("cachenet origin")
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ReadinessProbe(store).handle)
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/openapi.json", doc.handle)
    add_operator_routes(app, doc)
    add_knowledge_routes(app, doc)
    mirror = _make_mirror(settings, catalogue, store)
    add_device_routes(app, OriginSource(catalogue, store, mirror=mirror), doc)
    app.cleanup_ctx.append(_close_catalogue)
    if mirror is not None:
        app.on_response_prepare.append(_add_stale_ref_header)
        app.cleanup_ctx.append(_close_hub(mirror.hub))
    return app


def _make_mirror(settings: OriginSettings, catalogue: Catalogue, store: BlockStore) -> Mirror | None:
    if settings.upstream_url is None:
        return None
    token = os.environ.get(settings.upstream_token_env) if settings.upstream_token_env else None
    rules = MirrorRules(settings.allow, settings.deny, settings.max_file_size, settings.require_commit)
    return Mirror(
        catalogue,
        store,
        UpstreamHub(settings.upstream_url, token=token),
        rules=rules,
        revalidate_s=settings.upstream_revalidate_s,
        max_block_size=settings.max_block_size,
    )


async def _add_stale_ref_header(request: web.Request, resp: web.StreamResponse) -> None:
    """Say so in a header when a moving ref was served from its last known commit."""
    stale = STALE_REF.get()
    if stale is not None:
        resp.headers[STALE_REF_HEADER] = stale


def _request_counter(registry: CollectorRegistry) -> Middleware:
    requests = Counter("cachenet_http_requests", "HTTP requests served, by method", ["method"], registry=registry)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests.labels(request.method).inc()
        STALE_REF.set(None)  # each request starts fresh (its own task context)
        return await handler(request)

    return count


def _close_hub(hub: UpstreamHub) -> Callable[[web.Application], AsyncIterator[None]]:
    async def close(app: web.Application) -> AsyncIterator[None]:
        yield
        await hub.close()

    return close


async def _healthz(request: web.Request) -> web.Response:
    store = request.app[store_key]
    return web.json_response({"status": "ok", "role": "origin", "blocks": len(store), "used_bytes": store.used_bytes})


async def _close_catalogue(app: web.Application) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(app[catalogue_key].close)
