"""Settings of an edge node."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cachenet.errors import BadInput

__all__ = (
    "DEFAULT_EDGE_PORT",
    "EdgeSettings",
    "POLICY_NAMES",
)

DEFAULT_EDGE_PORT: Final = 8710
POLICY_NAMES: Final = ("lru", "lfu", "sharing-lru", "sharing-lfu")
_NODE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """Everything an edge node needs; defaults run on one machine."""

    node_id: str = "edge-1"
    data_dir: Path = Path("cachenet-data/edge-1")
    capacity_bytes: int = 10 * 1024**3
    origin_url: str = "http://127.0.0.1:8700"
    peers: tuple[str, ...] = ()
    controller_url: str | None = None
    policy: str = "sharing-lfu"
    egress_rate: float | None = None
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_EDGE_PORT
    public_url: str | None = None
    manifest_ttl_s: float = 30.0
    upstream_timeout_s: float = 30.0
    cut_through_min_bytes: int = 4 * 1024 * 1024
    lookup_refresh_s: float = 10.0
    state_save_interval_s: float = 30.0
    verify_on_read_max_bytes: int = 1024 * 1024
    scrub_rate: float | None = 50e6
    fsync: bool = True

    def __post_init__(self) -> None:
        if not _NODE_ID_RE.match(self.node_id):
            raise BadInput(f"node id {self.node_id!r}: use letters, digits, '.', '_' or '-'")
        if self.capacity_bytes <= 0:
            raise BadInput(f"capacity must be positive, got {self.capacity_bytes}")
        if self.policy not in POLICY_NAMES:
            raise BadInput(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.scrub_rate is not None and self.scrub_rate <= 0:
            raise BadInput(f"scrub rate must be positive, got {self.scrub_rate}")
        if self.egress_rate is not None and self.egress_rate <= 0:
            raise BadInput(f"egress rate must be positive, got {self.egress_rate}")
        for url in (self.origin_url, *self.peers, *([self.controller_url] if self.controller_url else [])):
            if not url.startswith(("http://", "https://")):
                raise BadInput(f"{url!r} is not an http(s) URL")

    @property
    def url(self) -> str:
        """The URL peers and the controller reach this node at."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
