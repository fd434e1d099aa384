"""The origin server: every published block and manifest, the device API and the operator API."""

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from cachenet.blockstore import BlockStore
from cachenet.deviceapi import add_device_routes
from cachenet.metrics import metrics_handler
from cachenet.middlewares import error_middleware
from cachenet.openapi import ApiDoc
from registry.catalogue import Catalogue
from registry.config import OriginSettings
from registry.keys import catalogue_key, settings_key, store_key
from registry.origin import OriginSource
from registry.routes import add_operator_routes

__all__ = ("create_app",)


def create_app(settings: OriginSettings) -> web.Application:
    """The origin's aiohttp application."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
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

    doc = ApiDoc("cachenet origin")
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/openapi.json", doc.handle)
    add_operator_routes(app, doc)
    add_device_routes(app, OriginSource(catalogue, store), doc)
    app.cleanup_ctx.append(_close_catalogue)
    return app


async def _healthz(request: web.Request) -> web.Response:
    store = request.app[store_key]
    return web.json_response({"status": "ok", "role": "origin", "blocks": len(store), "used_bytes": store.used_bytes})


async def _close_catalogue(app: web.Application) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(app[catalogue_key].close)
