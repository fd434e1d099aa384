"""Tuning of the device client: parallelism, per-source limits, timeouts, retries."""

from dataclasses import dataclass
from typing import Final

from cachenet.errors import BadInput

__all__ = ("DEFAULT_SETTINGS", "DEFAULT_SOURCE", "PullSettings")

DEFAULT_SOURCE: Final = "http://127.0.0.1:8700"


@dataclass(frozen=True, slots=True)
class PullSettings:
    """How a pull fetches blocks; the defaults suit a device on a LAN or loopback."""

    concurrency: int = 8
    per_source_connections: int = 4
    connect_timeout_s: float = 5.0
    stall_timeout_s: float = 10.0
    manifest_timeout_s: float = 30.0
    max_attempts: int = 8
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    write_chunk_bytes: int = 1024 * 1024
    assemble_threads: int = 2
    fsync: bool = True
    # The device's cell (a user id of the topology), sent with the pull's demand.
    cell: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_source_connections < 1:
            raise BadInput(
                f"concurrency ({self.concurrency}) and per-source connections "
                f"({self.per_source_connections}) must be at least 1"
            )
        for name in ("connect_timeout_s", "stall_timeout_s", "manifest_timeout_s", "backoff_s"):
            if getattr(self, name) <= 0:
                raise BadInput(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_attempts < 1 or self.write_chunk_bytes < 4096 or self.assemble_threads < 1:
            raise BadInput("max_attempts and assemble_threads must be >= 1, write_chunk_bytes >= 4096")


DEFAULT_SETTINGS: Final = PullSettings()
