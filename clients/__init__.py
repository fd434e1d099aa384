"""Device client: pull (multicast-aware), verify, assemble and merge models; the on-demand loader; the RAG client."""

from clients.config import PullSettings
from clients.loader import RemoteModel, open_model, open_model_async
from clients.multicast.session import MulticastOptions, MulticastStats
from clients.pull import PullReport, pull, pull_sync
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
