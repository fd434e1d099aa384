"""What a recomputation solves over: every model's blocks, the demand the nodes report, latency needs."""

from dataclasses import dataclass

from cachenet.manifest import BlockRef

__all__ = ("PlacementInputs",)


@dataclass(frozen=True, slots=True)
class PlacementInputs:
    """What a recomputation solves over: block refs, model → {block id: size}, demand, latency."""

    refs: dict[str, BlockRef]
    models: dict[str, dict[str, int]]
    demand: dict[tuple[str, str], float]
    demand_source: str
    latency: dict[str, float]

    @property
    def catalogue_bytes(self) -> int:
        """Bytes of every distinct block of every model."""
        return sum(r.size for r in self.refs.values())
