"""The simulator's step: serve one model request through a policy and say what it did."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cachenet.errors import CapacityExceeded
from placement.replacement.base import ReplacementPolicy

__all__ = ("AccessInfo", "serve_request")


@dataclass(frozen=True, slots=True)
class AccessInfo:
    """What serving one model request did to the cache (counts are objects: blocks or models)."""

    model: str
    hits: int
    misses: int
    hit_bytes: int
    miss_bytes: int
    evicted: tuple[str, ...]
    bypassed: tuple[str, ...]

    @property
    def model_hit(self) -> bool:
        """True when every object the request needed was already cached."""
        return self.misses == 0


def serve_request(
    policy: ReplacementPolicy,
    model: str,
    blocks: Mapping[str, int],
    *,
    granularity: Literal["block", "model"] = "block",
    users: Mapping[str, Iterable[str]] | None = None,
) -> AccessInfo:
    """Serve one model request through a policy: count demand, hit or fetch and admit each object.

    `blocks` maps the block ids the request reads to their sizes, in reading order; `users`
    maps a block id to every model known (from manifests) to use it, declared when the block is
    stored (default: the requesting model only). At granularity "model" the whole model is one
    object named `model` whose size is the sum of its blocks (no sharing: every model stores its
    own copy of a backbone). A missed object is stored after evicting victims, or bypassed when
    it is not admitted or pins leave no room.
    """
    objects = {model: sum(blocks.values())} if granularity == "model" else blocks
    policy.record_request(model, blocks=objects)
    hits = misses = hit_bytes = miss_bytes = 0
    evicted: list[str] = []
    bypassed: list[str] = []
    for object_id, size in objects.items():
        if object_id in policy:
            hits += 1
            hit_bytes += size
            policy.touch(object_id, model=model)
            continue
        misses += 1
        miss_bytes += size
        if not policy.admit(object_id, size):
            bypassed.append(object_id)
            continue
        try:
            evicted.extend(policy.evict(size))
        except CapacityExceeded:
            bypassed.append(object_id)
            continue
        known = users.get(object_id, ()) if users is not None and granularity == "block" else ()
        policy.insert(object_id, size, models=(model, *known))
    return AccessInfo(
        model=model,
        hits=hits,
        misses=misses,
        hit_bytes=hit_bytes,
        miss_bytes=miss_bytes,
        evicted=tuple(evicted),
        bypassed=tuple(bypassed),
    )
