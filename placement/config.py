"""Settings of the placement controller service."""

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cachenet.errors import BadInput

__all__ = (
    "ControllerSettings",
    "DEFAULT_CONTROLLER_PORT",
)

DEFAULT_CONTROLLER_PORT: Final = 8790


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Everything the controller needs; node URLs default to 127.0.0.1:<port> from the topology."""

    topology: Path = Path("deploy/topologies/demo.yaml")
    origin_url: str = "http://127.0.0.1:8700"
    data_dir: Path = Path("cachenet-data/controller")
    nodes: tuple[str, ...] = ()
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_CONTROLLER_PORT
    interval_s: float | None = None
    solver: str = "trimcaching-ls"

    def __post_init__(self) -> None:
        if self.interval_s is not None and self.interval_s <= 0:
            raise BadInput(f"interval must be positive, got {self.interval_s}")
        for entry in self.nodes:
            if "=" not in entry:
                raise BadInput(f"--node takes ID=URL, got {entry!r}")

    def node_map(self) -> dict[str, str]:
        """Server id → URL from the `--node ID=URL` entries."""
        return dict(e.split("=", 1) for e in self.nodes)
