"""The catalogue on SQLite and PostgreSQL: publish rules, tags, refcounts, collisions, migrations."""

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from cachenet.blockid import digest_of
from cachenet.errors import HashCollision, MissingBlocks, ModelNotFound
from cachenet.manifest import BaseRef, BlockRef, FileManifest, ModelManifest
from registry.catalogue import Catalogue
from registry.db import SCHEMA_VERSION, migrate
from tests.conftest import DATABASES

pytestmark = pytest.mark.parametrize("catalogue_backend", DATABASES, indirect=True)


def _ref(data: bytes) -> BlockRef:
    d = digest_of(data)
    return BlockRef(d.block_id, d.blake3, d.size)


def _manifest(name: str, *chunks: bytes, base: BaseRef | None = None) -> ModelManifest:
    refs = tuple(_ref(c) for c in chunks)
    return ModelManifest(name, (FileManifest("f.bin", sum(r.size for r in refs), "0" * 64, refs),), base)


@pytest.fixture
def catalogue(catalogue_url: str) -> Iterator[Catalogue]:
    c = Catalogue(catalogue_url)
    yield c
    c.close()


def _record(catalogue: Catalogue, m: ModelManifest) -> None:
    for ref in m.unique_blocks().values():
        catalogue.record_block(ref.block_id, ref.blake3, ref.size)


def test_publish_counts_references_and_moves_tags(catalogue: Catalogue) -> None:
    a = _manifest("org/a", b"shared", b"only-a")
    b = _manifest("org/b", b"shared", b"only-b")
    for m in (a, b):
        _record(catalogue, m)
        assert catalogue.publish(m, is_stored=lambda _: True).created
    assert not catalogue.publish(a, is_stored=lambda _: True).created  # idempotent
    counts = catalogue.block_refcounts()
    assert counts[_ref(b"shared").block_id] == 2 and counts[_ref(b"only-a").block_id] == 1
    assert catalogue.resolve_commit("org/a") == a.revision
    assert catalogue.manifest("org/a", a.revision) == a
    a2 = _manifest("org/a", b"shared", b"a-v2")
    _record(catalogue, a2)
    catalogue.publish(a2, is_stored=lambda _: True)
    assert catalogue.resolve_commit("org/a", "main") == a2.revision
    assert catalogue.shared_bytes(a2.revision) == {"org/b": len(b"shared")}
    assert catalogue.check(lambda _: True).ok


def test_publish_refuses_missing_blocks_and_records_nothing(catalogue: Catalogue) -> None:
    m = _manifest("org/m", b"x", b"y")
    _record(catalogue, m)
    with pytest.raises(MissingBlocks):
        catalogue.publish(m, is_stored=lambda b: b == _ref(b"x").block_id)
    with pytest.raises(ModelNotFound):
        catalogue.resolve_commit("org/m")
    assert set(catalogue.block_refcounts().values()) == {0}


def test_collision_is_refused(catalogue: Catalogue) -> None:
    ref = _ref(b"data")
    catalogue.record_block(ref.block_id, ref.blake3, ref.size)
    with pytest.raises(HashCollision):
        catalogue.record_block(ref.block_id, "f" * 64, ref.size)


def test_base_must_exist(catalogue: Catalogue) -> None:
    m = _manifest("org/lora", b"delta", base=BaseRef("org/base", "b" * 40))
    _record(catalogue, m)
    with pytest.raises(ModelNotFound, match="base"):
        catalogue.publish(m, is_stored=lambda _: True)


def test_migrations_are_idempotent(catalogue_url: str) -> None:
    c = Catalogue(catalogue_url)
    assert migrate(c.engine) == SCHEMA_VERSION
    c.close()
    again = Catalogue(catalogue_url)
    assert migrate(again.engine) == SCHEMA_VERSION
    with again.engine.connect() as conn:
        versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
    assert versions == [SCHEMA_VERSION]
    again.close()
