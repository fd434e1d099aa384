"""The catalogue: models, revisions, tags, manifests and blocks with reference counts.

Every call is synchronous (SQLAlchemy); servers call it through `asyncio.to_thread`.
Rows never leave this module: callers get frozen dataclasses and `ModelManifest`s.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy import delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cachenet.errors import HashCollision, MissingBlocks, ModelNotFound, RepoNotFound, RevisionNotFound
from cachenet.manifest import ModelManifest
from cachenet.names import COMMIT_RE, validate_model_name, validate_revision
from registry.db import (
    BlockRow,
    ModelRow,
    PlacementRunRow,
    RevisionBlockRow,
    RevisionRow,
    TagRow,
    open_engine,
)

__all__ = (
    "Catalogue",
    "CatalogueReport",
    "ModelSummary",
    "PlacementRunInfo",
    "PublishResult",
    "RevisionInfo",
    "sqlite_url",
)
log = logging.getLogger(__name__)
DEFAULT_TAG: Final = "main"
_MANIFEST_CACHE_ENTRIES: Final = 256


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    """One revision of a model as listed by the catalogue."""

    commit: str
    total_size: int
    base_commit: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model, its tags and revisions, newest first."""

    name: str
    source: str
    upstream: str | None
    tags: dict[str, str]
    revisions: tuple[RevisionInfo, ...]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish did: the revision, and whether it already existed."""

    name: str
    revision: str
    tag: str
    total_bytes: int
    unique_bytes: int
    created: bool


@dataclass(frozen=True, slots=True)
class PlacementRunInfo:
    """A stored placement run."""

    id: int
    solver: str
    created_at: float
    hit_ratio: float
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CatalogueReport:
    """Consistency of the catalogue against a block store: empty lists mean consistent."""

    missing_blocks: list[str] = field(default_factory=list)
    wrong_refcounts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every referenced block is present and every refcount is right."""
        return not (self.missing_blocks or self.wrong_refcounts)


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


class Catalogue:
    """Models, revisions, tags and blocks in SQL (SQLite by default, PostgreSQL when asked)."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.engine: Engine = open_engine(url)
        self._clock = clock
        self._manifests: dict[str, ModelManifest] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # -- blocks --------------------------------------------------------------------------

    def record_block(self, block_id: str, blake3: str, size: int) -> None:
        """Remember a stored block's hashes; raises `HashCollision` on a conflicting BLAKE3."""
        self.record_blocks([(block_id, blake3, size)])

    def record_blocks(self, blocks: Iterable[tuple[str, str, int]]) -> None:
        """Remember stored blocks (id, blake3, size) in one transaction; raises `HashCollision`."""
        wanted = {b[0]: b for b in blocks}
        for attempt in range(3):
            try:
                with Session(self.engine) as s, s.begin():
                    ids = sorted(wanted)
                    known: dict[str, tuple[str, int]] = {}
                    for start in range(0, len(ids), 500):
                        rows = s.execute(
                            select(BlockRow.block_id, BlockRow.blake3, BlockRow.size).where(
                                BlockRow.block_id.in_(ids[start : start + 500])
                            )
                        )
                        known.update({r.block_id: (r.blake3, r.size) for r in rows})
                    for block_id in ids:
                        _, blake3, size = wanted[block_id]
                        if block_id not in known:
                            s.add(BlockRow(block_id=block_id, blake3=blake3, size=size, refcount=0))
                        elif known[block_id] != (blake3, size):
                            raise _collision(block_id)
                return
            except sa_exc.IntegrityError:
                # A concurrent writer inserted the same block first: check it on the next try.
                if attempt == 2:
                    raise

    def known_blocks(self, block_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """block id → (blake3, size) for the given ids the catalogue knows."""
        ids = list(set(block_ids))
        out: dict[str, tuple[str, int]] = {}
        with Session(self.engine) as s:
            for start in range(0, len(ids), 500):
                rows = s.execute(
                    select(BlockRow.block_id, BlockRow.blake3, BlockRow.size).where(
                        BlockRow.block_id.in_(ids[start : start + 500])
                    )
                )
                out.update({r.block_id: (r.blake3, r.size) for r in rows})
        return out

    def block_refcounts(self) -> dict[str, int]:
        """block id → number of revisions that use it."""
        with Session(self.engine) as s:
            return {r.block_id: r.refcount for r in s.execute(select(BlockRow.block_id, BlockRow.refcount))}

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        manifest: ModelManifest,
        *,
        tag: str | None = DEFAULT_TAG,
        is_stored: Callable[[str], bool],
        source: str = "published",
        upstream: str | None = None,
    ) -> PublishResult:
        """Record a revision and move `tag` to it once every block it names is stored.

        Raises `MissingBlocks` when a block is not stored (nothing is recorded then),
        `HashCollision` when a block's BLAKE3 disagrees with the stored one, and
        `ModelNotFound` when the base revision is unknown.
        """
        if tag is not None:
            validate_revision(tag)
        if tag is not None and COMMIT_RE.match(tag):
            raise MissingBlocks(f"tag {tag!r} looks like a commit id; choose another tag name")
        blocks = manifest.unique_blocks()
        known = self.known_blocks(blocks)
        missing = sorted(b for b in blocks if b not in known or not is_stored(b))
        if missing:
            raise MissingBlocks(
                f"{manifest.name}: {len(missing)} block(s) are not uploaded yet, e.g. {missing[0]}; upload them first",
                missing=missing[:100],
                missing_count=len(missing),
            )
        for block_id, ref in blocks.items():
            if known[block_id] != (ref.blake3, ref.size):
                raise _collision(block_id)
        for attempt in range(3):
            try:
                return self._publish_once(manifest, tag, blocks, source, upstream)
            except sa_exc.IntegrityError:
                # Another process published the same model or revision at the same moment.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _publish_once(
        self,
        manifest: ModelManifest,
        tag: str | None,
        blocks: dict[str, Any],
        source: str,
        upstream: str | None,
    ) -> PublishResult:
        now = self._clock()
        with Session(self.engine) as s, s.begin():
            if manifest.base is not None:
                base = s.get(RevisionRow, manifest.base.revision)
                if base is None:
                    raise ModelNotFound(
                        f"base model {manifest.base.name}@{manifest.base.revision} is not published",
                        model=manifest.base.name,
                    )
            model = s.scalar(select(ModelRow).where(ModelRow.name == manifest.name))
            if model is None:
                model = ModelRow(name=manifest.name, source=source, upstream=upstream, created_at=now)
                s.add(model)
                s.flush()
            created = s.get(RevisionRow, manifest.revision) is None
            if created:
                s.add(
                    RevisionRow(
                        commit=manifest.revision,
                        model_id=model.id,
                        manifest=manifest.to_bytes(),
                        base_commit=None if manifest.base is None else manifest.base.revision,
                        total_size=manifest.total_size,
                        created_at=now,
                    )
                )
                s.flush()
                s.add_all(RevisionBlockRow(commit=manifest.revision, block_id=b) for b in blocks)
                ids = sorted(blocks)
                for start in range(0, len(ids), 500):
                    batch = ids[start : start + 500]
                    # PostgreSQL: lock the rows in block id order first, so concurrent publishes
                    # of models sharing blocks queue instead of deadlocking. (SQLite has no row
                    # locks and omits the clause; BEGIN IMMEDIATE serialises its writers.)
                    s.execute(
                        select(BlockRow.block_id)
                        .where(BlockRow.block_id.in_(batch))
                        .order_by(BlockRow.block_id)
                        .with_for_update(key_share=True)
                    )
                    s.execute(
                        update(BlockRow).where(BlockRow.block_id.in_(batch)).values(refcount=BlockRow.refcount + 1)
                    )
            row = None if tag is None else s.get(TagRow, (model.id, tag))
            if tag is not None and row is None:
                s.add(TagRow(model_id=model.id, tag=tag, commit=manifest.revision, updated_at=now))
            elif row is not None:
                row.commit, row.updated_at = manifest.revision, now
        unique = sum(ref.size for ref in blocks.values())
        log.info("published %s@%s as %s", manifest.name, tag, manifest.revision)
        return PublishResult(manifest.name, manifest.revision, tag or "", manifest.total_size, unique, created)

    # -- reading -------------------------------------------------------------------------

    def resolve_commit(self, name: str, revision: str = DEFAULT_TAG) -> str:
        """The commit id a tag (or commit) names; raises `ModelNotFound`."""
        validate_model_name(name)
        validate_revision(revision)
        with Session(self.engine) as s:
            model_id = s.scalar(select(ModelRow.id).where(ModelRow.name == name))
            if model_id is None:
                raise RepoNotFound(f"model {name!r} is not in the catalogue", model=name)
            if COMMIT_RE.match(revision):
                commit = s.scalar(
                    select(RevisionRow.commit).where(RevisionRow.commit == revision, RevisionRow.model_id == model_id)
                )
            else:
                commit = s.scalar(select(TagRow.commit).where(TagRow.model_id == model_id, TagRow.tag == revision))
            if commit is None:
                raise RevisionNotFound(f"model {name!r} has no revision {revision!r}", model=name)
            return commit

    def manifest(self, name: str, revision: str = DEFAULT_TAG) -> ModelManifest:
        """The manifest of a model revision (tag or commit); raises `ModelNotFound`."""
        commit = self.resolve_commit(name, revision)
        return self.manifest_by_commit(commit)

    def manifest_by_commit(self, commit: str) -> ModelManifest:
        """The manifest of a commit id; raises `ModelNotFound`."""
        with self._lock:
            cached = self._manifests.get(commit)
        if cached is not None:
            return cached
        with Session(self.engine) as s:
            data = s.scalar(select(RevisionRow.manifest).where(RevisionRow.commit == commit))
        if data is None:
            raise RevisionNotFound(f"no revision {commit!r}", revision=commit)
        manifest = ModelManifest.from_bytes(bytes(data))
        with self._lock:
            if len(self._manifests) >= _MANIFEST_CACHE_ENTRIES:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[commit] = manifest
        return manifest

    def list_models(self) -> list[ModelSummary]:
        """Every model with its tags and revisions, sorted by name."""
        with Session(self.engine) as s:
            models = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            tags: dict[int, dict[str, str]] = {}
            for t in s.scalars(select(TagRow)):
                tags.setdefault(t.model_id, {})[t.tag] = t.commit
            revs: dict[int, list[RevisionInfo]] = {}
            for r in s.execute(
                select(
                    RevisionRow.model_id,
                    RevisionRow.commit,
                    RevisionRow.total_size,
                    RevisionRow.base_commit,
                    RevisionRow.created_at,
                ).order_by(RevisionRow.created_at.desc())
            ):
                revs.setdefault(r.model_id, []).append(
                    RevisionInfo(r.commit, r.total_size, r.base_commit, r.created_at)
                )
            return [
                ModelSummary(m.name, m.source, m.upstream, tags.get(m.id, {}), tuple(revs.get(m.id, ())))
                for m in models
            ]

    def model(self, name: str) -> ModelSummary:
        """One model's summary; raises `ModelNotFound`."""
        validate_model_name(name)
        for m in self.list_models():
            if m.name == name:
                return m
        raise RepoNotFound(f"model {name!r} is not in the catalogue", model=name)

    def shared_bytes(self, commit: str) -> dict[str, int]:
        """Other model name → bytes of this revision's blocks that model's revisions also use."""
        with Session(self.engine) as s:
            mine = select(RevisionBlockRow.block_id).where(RevisionBlockRow.commit == commit)
            rows = s.execute(
                select(ModelRow.name, BlockRow.block_id, BlockRow.size)
                .join(RevisionRow, RevisionRow.model_id == ModelRow.id)
                .join(RevisionBlockRow, RevisionBlockRow.commit == RevisionRow.commit)
                .join(BlockRow, BlockRow.block_id == RevisionBlockRow.block_id)
                .where(RevisionBlockRow.block_id.in_(mine), RevisionRow.commit != commit)
                .distinct()
            ).all()
            own_model = s.scalar(select(ModelRow.name).join(RevisionRow).where(RevisionRow.commit == commit))
        out: dict[str, int] = {}
        for name, _block_id, size in rows:
            if name != own_model:
                out[name] = out.get(name, 0) + size
        return out

    def bytes_shared_with_others(self, commit: str) -> int:
        """Bytes of this revision's distinct blocks that some other model's revision also uses."""
        return sum(self._shared_blocks(commit).values())

    def _shared_blocks(self, commit: str) -> dict[str, int]:
        with Session(self.engine) as s:
            own_model = select(RevisionRow.model_id).where(RevisionRow.commit == commit).scalar_subquery()
            mine = select(RevisionBlockRow.block_id).where(RevisionBlockRow.commit == commit)
            rows = s.execute(
                select(BlockRow.block_id, BlockRow.size)
                .join(RevisionBlockRow, RevisionBlockRow.block_id == BlockRow.block_id)
                .join(RevisionRow, RevisionRow.commit == RevisionBlockRow.commit)
                .where(RevisionBlockRow.block_id.in_(mine), RevisionRow.model_id != own_model)
                .distinct()
            ).all()
        return {r.block_id: r.size for r in rows}

    def stored_bytes(self) -> tuple[int, int]:
        """(bytes of distinct blocks referenced, bytes of all revisions as whole files)."""
        with Session(self.engine) as s:
            unique = s.scalar(select(func.coalesce(func.sum(BlockRow.size), 0)).where(BlockRow.refcount > 0))
            logical = s.scalar(select(func.coalesce(func.sum(RevisionRow.total_size), 0)))
        return int(unique or 0), int(logical or 0)

    def check(self, is_stored: Callable[[str], bool]) -> CatalogueReport:
        """Every referenced block is stored and every refcount equals its number of revisions."""
        with Session(self.engine) as s:
            counted = dict(
                s.execute(select(RevisionBlockRow.block_id, func.count()).group_by(RevisionBlockRow.block_id)).all()
            )
            rows = s.execute(select(BlockRow.block_id, BlockRow.refcount)).all()
        missing = sorted(b for b in counted if not is_stored(b))
        wrong = sorted(b for b, rc in rows if rc != counted.get(b, 0))
        return CatalogueReport(missing, wrong)

    # -- placement runs ------------------------------------------------------------------

    def add_placement_run(self, solver: str, hit_ratio: float, summary: dict[str, Any]) -> int:
        """Store a placement run; returns its id."""
        with Session(self.engine) as s, s.begin():
            row = PlacementRunRow(
                solver=solver, created_at=self._clock(), hit_ratio=hit_ratio, summary=json.dumps(summary)
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def placement_runs(self, *, limit: int = 20) -> list[PlacementRunInfo]:
        """The most recent placement runs, newest first."""
        with Session(self.engine) as s:
            rows = s.scalars(select(PlacementRunRow).order_by(PlacementRunRow.id.desc()).limit(limit)).all()
            return [PlacementRunInfo(r.id, r.solver, r.created_at, r.hit_ratio, json.loads(r.summary)) for r in rows]

    def forget_unreferenced_blocks(self) -> list[str]:
        """Drop rows of blocks no revision uses (after a crash between upload and publish)."""
        with Session(self.engine) as s, s.begin():
            ids = list(s.scalars(select(BlockRow.block_id).where(BlockRow.refcount <= 0)))
            if ids:
                s.execute(delete(BlockRow).where(BlockRow.block_id.in_(ids)))
        return ids


def _collision(block_id: str) -> HashCollision:
    return HashCollision(
        f"block {block_id} is already stored with a different BLAKE3 digest or size; refusing the colliding bytes",
        block_id=block_id,
    )
