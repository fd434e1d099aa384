"""Messages of an edge node's node API: its state, its demand, and the placement plan it applies."""

from typing import Annotated, Final

import msgspec

from cachenet.protocol.manifest import BlockEntry
from cachenet.protocol.types import ShortText

__all__ = ("DemandRow", "MAX_PLAN_BLOCKS", "ModelHolding", "NodeDemand", "NodeState", "PlanProgress", "PlanRequest")

# A plan names at most this many blocks (a 64 MiB plan body holds about 600,000).
MAX_PLAN_BLOCKS: Final = 1_000_000


class PlanRequest(msgspec.Struct, frozen=True):
    """PUT /v1/node/plan: exactly the blocks this node must hold, as [block id, BLAKE3, length]."""

    blocks: Annotated[list[BlockEntry], msgspec.Meta(max_length=MAX_PLAN_BLOCKS)]
    plan_id: ShortText | None = None  # nodes keep its first 64 characters; none: "manual"


class PlanProgress(msgspec.Struct, frozen=True):
    """The plan a node applies and how far fetching got (`failed`: up to 50 block ids)."""

    plan_id: str | None
    blocks: int
    bytes: int
    fetched: int
    failed: list[str]
    state: str


class ModelHolding(msgspec.Struct, frozen=True):
    """How much of a model's newest known revision a node holds."""

    name: str
    revision: str
    bytes: int
    held_bytes: int
    complete: bool
    fraction: float


class NodeState(msgspec.Struct, frozen=True):
    """GET /v1/node/state (`block_ids` only when asked for with ?blocks=1)."""

    node_id: str
    url: str
    policy: str
    capacity_bytes: int
    used_bytes: int
    pinned_bytes: int
    cached_bytes: int
    blocks: int
    plan: PlanProgress
    models: list[ModelHolding]
    block_ids: list[str] | None = None


class DemandRow(msgspec.Struct, frozen=True):
    """Decayed request count of a model revision from one client cell (None: no cell given)."""

    model: str
    revision: str
    cell: str | None
    count: float


class NodeDemand(msgspec.Struct, frozen=True):
    """GET /v1/node/demand: largest counts first."""

    node_id: str
    demand: list[DemandRow]
