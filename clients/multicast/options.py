"""How a pull uses multicast (options) and what multicast did for it (stats)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cachenet.errors import BadInput

__all__ = ("MULTICAST_MODES", "MulticastOptions", "MulticastStats", "Progress")

MULTICAST_MODES: Final = ("auto", "on", "off")
Progress = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class MulticastOptions:
    """How a pull uses multicast."""

    mode: str = "auto"
    interface: str | None = None  # local IPv4 address to join on (default: loopback for a loopback node, else any)
    rate: float | None = None  # bytes/s this device's link takes, told to the node's planner
    join_timeout_s: float = 30.0
    poll_interval_s: float = 0.25
    idle_timeout_s: float = 15.0
    repair_concurrency: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MULTICAST_MODES:
            raise BadInput(f"multicast mode must be one of {', '.join(MULTICAST_MODES)}, got {self.mode!r}")
        if self.rate is not None and self.rate <= 0:
            raise BadInput(f"link rate must be positive, got {self.rate}")
        if self.repair_concurrency < 1 or self.poll_interval_s <= 0 or self.idle_timeout_s <= 0:
            raise BadInput("repair concurrency, poll interval and idle timeout must be positive")


@dataclass(frozen=True, slots=True)
class MulticastStats:
    """What multicast did for one pull."""

    node: str | None
    session: str | None
    late: bool
    multicast_blocks: int
    multicast_bytes: int
    expected_bytes: int
    missed_bytes: int
    repair_bytes: int
    repaired_blocks: int
    stored_bytes: int
    refused_blocks: int
    fallback: str | None

    @property
    def loss(self) -> float:
        """Share of the bytes expected by multicast that were lost (and repaired)."""
        return self.missed_bytes / self.expected_bytes if self.expected_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The stats as JSON."""
        return {
            "node": self.node,
            "session": self.session,
            "late": self.late,
            "multicast_blocks": self.multicast_blocks,
            "multicast_bytes": self.multicast_bytes,
            "expected_bytes": self.expected_bytes,
            "missed_bytes": self.missed_bytes,
            "repair_bytes": self.repair_bytes,
            "repaired_blocks": self.repaired_blocks,
            "stored_bytes": self.stored_bytes,
            "refused_blocks": self.refused_blocks,
            "loss": round(self.loss, 6),
            "fallback": self.fallback,
        }
