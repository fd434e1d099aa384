"""Device client: pull (multicast-aware), verify, assemble and merge models; the on-demand loader; the RAG client.

The names below load on first use, so `cachenet pull --help` does not import aiohttp or numpy.
"""

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from clients.config import PullSettings
    from clients.loader import RemoteModel, open_model, open_model_async
    from clients.multicast.session import MulticastOptions, MulticastStats
    from clients.puller import PullReport, pull, pull_sync
    from clients.sources import SourceReport

__all__ = (
    "MulticastOptions",
    "MulticastStats",
    "PullReport",
    "PullSettings",
    "RemoteModel",
    "SourceReport",
    "open_model",
    "open_model_async",
    "pull",
    "pull_sync",
)

_HOMES: Final = {
    "MulticastOptions": "clients.multicast.session",
    "MulticastStats": "clients.multicast.session",
    "PullReport": "clients.puller",
    "PullSettings": "clients.config",
    "RemoteModel": "clients.loader",
    "SourceReport": "clients.sources",
    "open_model": "clients.loader",
    "open_model_async": "clients.loader",
    "pull": "clients.puller",
    "pull_sync": "clients.puller",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
