"""Messages of the placement controller's API and of the placement runs the origin's catalogue keeps."""

from typing import Annotated, Any, Literal

import msgspec

from cachenet.protocol.types import ShortText

__all__ = (
    "CurrentPlacement",
    "LookupTable",
    "PlacementRun",
    "PlacementRunBody",
    "PlacementRunList",
    "RecomputeRequest",
    "RunList",
    "StoredRun",
    "TopologyLink",
    "TopologyServer",
    "TopologyUser",
    "TopologyView",
)

SolverName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Ratio = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class RecomputeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /v1/placement/recompute: the solver to run (the controller's default when left out)."""

    solver: ShortText | None = None


class PlacementRunBody(msgspec.Struct, frozen=True):
    """POST /v1/placement-runs: a controller's run document; these fields are checked, the rest kept as sent."""

    solver: SolverName
    hit_ratio: Ratio


class PlacementRun(msgspec.Struct, frozen=True):
    """A placement run as the catalogue keeps it: its row and the controller's whole run document."""

    id: int
    solver: str
    created_at: float
    hit_ratio: float
    summary: dict[str, Any]


class PlacementRunList(msgspec.Struct, frozen=True):
    """GET /v1/placement-runs: newest first."""

    runs: list[PlacementRun]


class StoredRun(msgspec.Struct, frozen=True):
    """The catalogue id of a stored placement run."""

    id: int


class RunList(msgspec.Struct, frozen=True):
    """GET /v1/runs on the controller: run documents newest first (each with `stored`), and who answered."""

    runs: list[dict[str, Any]]
    source: Literal["origin", "memory"]
    unsaved: int


class CurrentPlacement(msgspec.Struct, frozen=True):
    """GET /v1/placement: the placement in force and the last run's document."""

    placement: dict[str, Any] | None
    last_run: dict[str, Any] | None


class LookupTable(msgspec.Struct, frozen=True):
    """GET /v1/lookup: block id -> URLs of the nodes that hold it."""

    blocks: dict[str, list[str]]


class TopologyServer(msgspec.Struct, frozen=True):
    """An edge server: capacity in bytes, position in metres, URL when it runs."""

    id: str
    capacity_bytes: int
    position: list[float]
    url: str | None


class TopologyLink(msgspec.Struct, frozen=True):
    """A backhaul link and its rate in bit/s."""

    a: str
    b: str
    rate_bps: float


class TopologyUser(msgspec.Struct, frozen=True):
    """A user (or cell of users) and the server that serves it."""

    id: str
    server: str
    position: list[float]


class TopologyView(msgspec.Struct, frozen=True):
    """GET /v1/topology."""

    name: str
    origin: str | None
    nodes: list[str]
    servers: list[TopologyServer]
    links: list[TopologyLink]
    users: list[TopologyUser]
