"""Every replacement policy by name, and `make_policy` to build one."""

import time
from collections.abc import Callable
from typing import Final

from cachenet.errors import BadInput
from placement.replacement.base import BlockPolicy, ReplacementPolicy
from placement.replacement.bundle import BundlePolicy
from placement.replacement.frequency import LFUPolicy, SharingLFUPolicy
from placement.replacement.recency import LRUPolicy, SharingLRUPolicy

__all__ = ("POLICIES", "make_policy")

POLICIES: Final[dict[str, type[BlockPolicy]]] = {
    cls.name: cls for cls in (LRUPolicy, LFUPolicy, SharingLRUPolicy, SharingLFUPolicy, BundlePolicy)
}


def make_policy(
    name: str,
    *,
    capacity_bytes: int,
    clock: Callable[[], float] = time.monotonic,
    half_life_s: float | None = None,
) -> ReplacementPolicy:
    """Build the policy registered under `name` ("lru", "lfu", "sharing-lru", "sharing-lfu", "bundle").

    Raises:
        BadInput: an unknown name, a bad capacity, or `half_life_s` for a policy without decay.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise BadInput(
            f"unknown replacement policy {name!r}; choose one of {', '.join(sorted(POLICIES))}",
            policy=name,
        )
    if half_life_s is None:
        return cls(capacity_bytes, clock=clock)
    if not issubclass(cls, SharingLFUPolicy | BundlePolicy):
        raise BadInput(f"policy {name!r} does not decay; drop half_life_s", policy=name)
    return cls(capacity_bytes, clock=clock, half_life_s=half_life_s)
