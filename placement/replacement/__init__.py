"""Replacement policies for an edge node's block store: LRU, LFU, sharing-aware and bundle-aware.

Pure bookkeeping with no I/O: the edge node and the controller's simulator both drive them.

- base: the `ReplacementPolicy` contract and `BlockPolicy`, the bookkeeping all share
- recency: LRU, sharing-LRU; frequency: LFU, sharing-LFU
- bundle: keeps blocks for the models they complete (a model hit needs every block)
- registry: `POLICIES` by name and `make_policy`
- simulator: `serve_request`, one model request through a policy
"""

from placement.replacement.base import DEFAULT_HALF_LIFE_S, BlockPolicy, ReplacementPolicy
from placement.replacement.bundle import BundlePolicy
from placement.replacement.frequency import LFUPolicy, SharingLFUPolicy
from placement.replacement.recency import LRUPolicy, SharingLRUPolicy
from placement.replacement.registry import POLICIES, make_policy
from placement.replacement.simulator import AccessInfo, serve_request

__all__ = (
    "AccessInfo",
    "BlockPolicy",
    "BundlePolicy",
    "DEFAULT_HALF_LIFE_S",
    "LFUPolicy",
    "LRUPolicy",
    "POLICIES",
    "ReplacementPolicy",
    "SharingLFUPolicy",
    "SharingLRUPolicy",
    "make_policy",
    "serve_request",
)
