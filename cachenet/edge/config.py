"""Settings of an edge node."""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cachenet.errors import BadInput
from cachenet.multicast.sockets import group_address, is_loopback, validate_group
from cachenet.server.gate import DEFAULT_QUERY_CONCURRENCY, DEFAULT_QUERY_QUEUE
from cachenet.server.middlewares import DEFAULT_MAX_REQUESTS_PER_CLIENT

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
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT
    knowledge_concurrency: int = DEFAULT_QUERY_CONCURRENCY  # knowledge queries running at once
    knowledge_queue: int = DEFAULT_QUERY_QUEUE  # and waiting; beyond, 503 + Retry-After
    # Multicast delivery (None: off). Groups are allotted counting up from `multicast_group`.
    multicast_group: str | None = "239.255.77.1"
    multicast_groups: int = 16
    multicast_port: int | None = None  # default: the HTTP port number, over UDP
    multicast_ttl: int = 1
    multicast_interface: str | None = None  # default: `host` when it is one IPv4 address
    multicast_rate: float = 25e6
    multicast_window_s: float = 0.1
    multicast_lead_s: float = 0.2
    multicast_nack_window_s: float = 0.3  # after each pass, how long members may report losses
    multicast_repair_passes: int = 3  # repair passes by multicast at most, before unicast repair
    multicast_piece_bytes: int | None = None  # default: 16 KiB on loopback, else 1400 (one Ethernet frame)
    multicast_member_lease_s: float = 3.0  # a member silent this long no longer keeps a session sending
    multicast_test_drop: float = 0.0  # test hook: the share of datagrams the sender drops on purpose

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
        if self.knowledge_concurrency < 1 or self.knowledge_queue < 0:
            raise BadInput("knowledge_concurrency must be at least 1 and knowledge_queue not negative")
        self._check_multicast()
        for url in (self.origin_url, *self.peers, *([self.controller_url] if self.controller_url else [])):
            if not url.startswith(("http://", "https://")):
                raise BadInput(f"{url!r} is not an http(s) URL")

    def _check_multicast(self) -> None:
        if self.multicast_group is None:
            return
        validate_group(self.multicast_group)
        if not 1 <= self.multicast_groups <= 256:
            raise BadInput(f"multicast groups must be 1-256, got {self.multicast_groups}")
        group_address(self.multicast_group, self.multicast_groups - 1)
        if self.multicast_port is not None and not 1 <= self.multicast_port <= 65535:
            raise BadInput(f"multicast port must be 1-65535, got {self.multicast_port}")
        if not 0 <= self.multicast_ttl <= 255:
            raise BadInput(f"multicast TTL must be 0-255, got {self.multicast_ttl}")
        if self.multicast_interface is not None:
            try:
                ipaddress.IPv4Address(self.multicast_interface)
            except ValueError:
                raise BadInput(f"multicast interface {self.multicast_interface!r}: give its IPv4 address") from None
        if (
            self.multicast_rate <= 0
            or min(self.multicast_window_s, self.multicast_lead_s, self.multicast_nack_window_s) < 0
        ):
            raise BadInput("multicast rate must be positive, window and lead time not negative")
        if self.multicast_piece_bytes is not None and not 512 <= self.multicast_piece_bytes <= 65000:
            raise BadInput(f"multicast piece size must be 512-65000 bytes, got {self.multicast_piece_bytes}")
        if not 0 <= self.multicast_repair_passes <= 16:
            raise BadInput(f"multicast repair passes must be 0-16, got {self.multicast_repair_passes}")
        if self.multicast_member_lease_s <= 0:
            raise BadInput(f"multicast member lease must be positive, got {self.multicast_member_lease_s}")
        if not 0 <= self.multicast_test_drop < 1:
            raise BadInput(f"multicast test drop rate must be in [0, 1), got {self.multicast_test_drop}")

    @property
    def group_interface(self) -> str | None:
        """The interface address multicast goes out of (None: the kernel's route)."""
        if self.multicast_interface is not None:
            return self.multicast_interface
        try:
            ip = ipaddress.IPv4Address(self.host)
        except ValueError:
            return None
        return None if ip.is_unspecified else str(ip)

    @property
    def group_port(self) -> int:
        """The UDP port of the multicast groups."""
        return self.multicast_port or self.port

    @property
    def piece_bytes(self) -> int:
        """Block bytes per datagram."""
        if self.multicast_piece_bytes is not None:
            return self.multicast_piece_bytes
        return 16 * 1024 if is_loopback(self.group_interface) else 1400

    @property
    def url(self) -> str:
        """The URL peers and the controller reach this node at."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
