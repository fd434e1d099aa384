"""Messages of plan delivery: the relay schedule a plan carries, and the holdings a node reports.

A plan (`PUT /v1/node/plan`) may carry a `schedule`: per block, the nodes to fetch it from, in
order (its parent in the relay tree first; the origin is always tried last), and the rate of the
link to each. A node's holdings (`GET /v1/node/holdings`) are what it holds now and what it is
fetching, as changes since a sequence number the controller keeps (all of it when that is too old).
"""

from typing import Annotated, Final

import msgspec

from cachenet.protocol.types import BlockId, ShortText

__all__ = (
    "DeliverySchedule",
    "HoldingsAnswer",
    "MAX_RELAY_PARENTS",
    "MAX_RELAY_SOURCES",
    "MAX_SCHEDULED_BLOCKS",
    "RelaySource",
)

MAX_RELAY_SOURCES: Final = 1024
MAX_RELAY_PARENTS: Final = 16
MAX_SCHEDULED_BLOCKS: Final = 1_000_000

Url = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2048)]
Rate = Annotated[float, msgspec.Meta(gt=0)]
SourceIndex = Annotated[int, msgspec.Meta(ge=0, lt=MAX_RELAY_SOURCES)]


class RelaySource(msgspec.Struct, frozen=True):
    """A node a plan's blocks are fetched from, and the rate of the link to it (bytes/s; None: unpaced)."""

    url: Url
    rate: Rate | None = None


class DeliverySchedule(msgspec.Struct, frozen=True):
    """Where each planned block comes from: `routes[block]` indexes `sources`, nearest parent first."""

    sources: Annotated[list[RelaySource], msgspec.Meta(max_length=MAX_RELAY_SOURCES)] = []
    routes: Annotated[
        dict[BlockId, Annotated[list[SourceIndex], msgspec.Meta(max_length=MAX_RELAY_PARENTS)]],
        msgspec.Meta(max_length=MAX_SCHEDULED_BLOCKS),
    ] = {}
    origin_rate: Rate | None = None
    run: ShortText = ""


class HoldingsAnswer(msgspec.Struct, frozen=True):
    """GET /v1/node/holdings: changes after `since` (or everything held, `full`), and what is being fetched."""

    node_id: str
    epoch: str
    seq: int
    full: bool
    added: list[str]
    removed: list[str]
    fetching: list[str]
