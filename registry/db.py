"""SQL schema of the catalogue (SQLAlchemy 2.0) and its versioned migrations.

Tables:

    schema_version   (version)                               one row: the applied migration
    models           (id, name, source, upstream, created_at)
    revisions        (commit, model_id, manifest, base_commit, total_size, created_at)
    tags             (model_id, tag) -> commit                `main` moves on every publish
    blocks           (block_id, blake3, size, refcount)      refcount = revisions using the block
    revision_blocks  (commit, block_id)                      distinct blocks of a revision
    placement_runs   (id, solver, created_at, hit_ratio, summary)

Migrations are plain functions applied in order inside one transaction each; the
current version is kept in `schema_version`. The same code runs on SQLite and PostgreSQL
(`postgresql://...` URLs use psycopg 3, the driver of the `postgres` extra).
"""

from collections.abc import Callable
from typing import Final

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = (
    "Base",
    "BlockRow",
    "ModelRow",
    "PlacementRunRow",
    "RevisionBlockRow",
    "RevisionRow",
    "SCHEMA_VERSION",
    "SchemaVersionRow",
    "TagRow",
    "migrate",
    "open_engine",
)


class Base(DeclarativeBase):
    """Declarative base of the catalogue's tables."""


class SchemaVersionRow(Base):
    """The schema version applied to this database."""

    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class ModelRow(Base):
    """A model name and where it came from."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(20), default="published")
    upstream: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class RevisionRow(Base):
    """One immutable model revision and its canonical manifest."""

    __tablename__ = "revisions"
    commit: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    base_commit: Mapped[str | None] = mapped_column(String(40), nullable=True)
    total_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class TagRow(Base):
    """A moving name (`main`, `v1`) pointing at a revision of a model."""

    __tablename__ = "tags"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    commit: Mapped[str] = mapped_column(ForeignKey("revisions.commit"))
    updated_at: Mapped[float] = mapped_column(Float)


class BlockRow(Base):
    """A block known to the catalogue: its hashes, size and how many revisions use it."""

    __tablename__ = "blocks"
    block_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    blake3: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    refcount: Mapped[int] = mapped_column(Integer, default=0)


class RevisionBlockRow(Base):
    """That a revision uses a block (each distinct block once)."""

    __tablename__ = "revision_blocks"
    commit: Mapped[str] = mapped_column(ForeignKey("revisions.commit"), primary_key=True)
    block_id: Mapped[str] = mapped_column(ForeignKey("blocks.block_id"), primary_key=True, index=True)


class PlacementRunRow(Base):
    """A placement computation: solver, expected hit ratio and its JSON summary."""

    __tablename__ = "placement_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    solver: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    hit_ratio: Mapped[float] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)


def _v1_initial(conn: Connection) -> None:
    Base.metadata.create_all(conn)


MIGRATIONS: Final[tuple[Callable[[Connection], None], ...]] = (_v1_initial,)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def open_engine(url: str) -> Engine:
    """An engine for `url` (SQLite file or PostgreSQL) with the schema migrated to the latest version."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the `postgres` extra ships psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Writers take the lock at BEGIN, so two publishers never deadlock on an upgrade.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    migrate(engine)
    return engine


def migrate(engine: Engine) -> int:
    """Apply every migration newer than the database's version; returns the version reached."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several processes may start at once: serialise migrations.
            conn.execute(text("SELECT pg_advisory_xact_lock(7233001)"))
        if not inspect(conn).has_table("schema_version"):
            SchemaVersionRow.__table__.create(conn)  # type: ignore[attr-defined]
        current = conn.execute(select(SchemaVersionRow.version)).scalar() or 0
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
        if current < SCHEMA_VERSION:
            conn.execute(SchemaVersionRow.__table__.delete())  # type: ignore[attr-defined]
            conn.execute(SchemaVersionRow.__table__.insert().values(version=SCHEMA_VERSION))  # type: ignore[attr-defined]
    return SCHEMA_VERSION
