"""Typed keys of the edge app's state."""

from aiohttp import web

from cachenet.edge.cache import EdgeCache
from cachenet.edge.config import EdgeSettings
from cachenet.edge.demand import DemandStats
from cachenet.edge.knowledge.shards import EdgeKnowledge
from cachenet.edge.manifests import ManifestCache

__all__ = ("cache_key", "demand_key", "edge_knowledge_key", "manifests_key", "settings_key")

settings_key = web.AppKey("settings", EdgeSettings)
cache_key = web.AppKey("cache", EdgeCache)
manifests_key = web.AppKey("manifests", ManifestCache)
demand_key = web.AppKey("demand", DemandStats)
edge_knowledge_key = web.AppKey("edge_knowledge", EdgeKnowledge)
