"""Settings of the origin server."""

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cachenet.errors import BadInput
from cachenet.server.middlewares import DEFAULT_MAX_REQUESTS_PER_CLIENT
from registry.chunking import DEFAULT_MAX_BLOCK_BYTES

__all__ = ("DEFAULT_ORIGIN_PORT", "OriginSettings")

DEFAULT_ORIGIN_PORT: Final = 8700


@dataclass(frozen=True, slots=True)
class OriginSettings:
    """Everything the origin needs; defaults run on one machine with no set-up."""

    data_dir: Path = Path("cachenet-data/origin")
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_ORIGIN_PORT
    token: str | None = None
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES
    fsync: bool = True
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT
    upstream_url: str | None = None
    upstream_token_env: str | None = None
    upstream_revalidate_s: float = 60.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_file_size: int | None = None
    require_commit: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BadInput(f"port must be 0..65535, got {self.port}")
        if self.upstream_url is not None and not self.upstream_url.startswith(("http://", "https://")):
            raise BadInput(f"upstream {self.upstream_url!r} is not an http(s) URL")
        if self.max_block_size <= 0:
            raise BadInput(f"max_block_size must be positive, got {self.max_block_size}")

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the catalogue (a SQLite file in the data folder by default)."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'catalogue.sqlite').resolve()}"
