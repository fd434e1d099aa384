"""Typed keys of the origin app's state."""

from aiohttp import web

from cachenet.blockstore import BlockStore
from registry.catalogue import Catalogue
from registry.config import OriginSettings

__all__ = ("catalogue_key", "settings_key", "store_key")

settings_key = web.AppKey("settings", OriginSettings)
store_key = web.AppKey("store", BlockStore)
catalogue_key = web.AppKey("catalogue", Catalogue)
