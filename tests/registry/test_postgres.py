"""The catalogue on PostgreSQL as on SQLite: concurrent publishes from processes, URLs, sizes."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import text

from cachenet.blockid import digest_of
from cachenet.blockstore import BlockStore
from cachenet.manifest import BlockRef, FileManifest, ModelManifest
from registry.catalogue import Catalogue
from tests.conftest import DATABASES, PostgresServer

on_both_databases: Final = pytest.mark.parametrize("catalogue_backend", DATABASES, indirect=True)

VARIANTS: Final = 4
BASE_PUBLISHERS: Final = 2  # processes publishing the very same base model at once
BASE_TENSORS: Final = 600  # more than one batch of 500 refcount updates per publish
ADAPTER_TENSORS: Final = 6
_START_TIMEOUT_S: Final = 60.0

# Each publisher imports everything, then waits for the start file, so the publishes overlap
# (catalogue migration on an empty database included) instead of running one after another.
_PUBLISHER: Final = """
import sys, time
from pathlib import Path
import registry.publish, cachenet.cli
try:
    import psycopg
except ImportError:
    pass
go, deadline = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.002)
sys.exit(cachenet.cli.main(sys.argv[3:]))
"""


@on_both_databases
def test_concurrent_publishes_of_models_sharing_blocks(catalogue_url: str, tmp_path: Path) -> None:
    # One catalogue, one block store per publisher: `BlockStore()` deletes every temporary
    # file it finds when it opens, including the in-progress writes of another process on
    # the same folder, so publishers must not share a data folder (reported with this test).
    base = _tensors(seed=0, count=BASE_TENSORS, prefix="base")
    folders = {"org/base": _model_folder(tmp_path / "base", base)}
    for i in range(VARIANTS):
        adapter = _tensors(seed=100 + i, count=ADAPTER_TENSORS, prefix="adapter")
        folders[f"org/variant-{i}"] = _model_folder(tmp_path / f"variant-{i}", {**base, **adapter})
    jobs = [*folders.items(), *[("org/base", folders["org/base"])] * (BASE_PUBLISHERS - 1)]
    data_dirs = [tmp_path / f"origin-{n}" for n in range(len(jobs))]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PUBLISHER,
                str(go),
                str(_START_TIMEOUT_S),
                "publish",
                str(folder),
                "--name",
                name,
                "--data",
                str(data),
                "--db",
                catalogue_url,
                "--json",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CACHENET_FSYNC": "false"},
        )
        for (name, folder), data in zip(jobs, data_dirs, strict=True)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"publisher {p.pid} exited {p.returncode}: {err[-3000:]}"
    reports = [json.loads(out) for out, _err in outputs]
    base_reports = [r for r in reports if r["name"] == "org/base"]
    assert len({r["revision"] for r in base_reports}) == 1
    assert sum(r["created"] for r in base_reports) == 1  # the others found it already published

    stores = [BlockStore(data / "store", fsync=False) for data in data_dirs]
    assert all(store.check().ok for store in stores)
    catalogue = Catalogue(catalogue_url)
    try:
        assert catalogue.check(lambda b: any(store.has(b) for store in stores)).ok
        manifests = {name: catalogue.manifest(name) for name in folders}
        assert [m.name for m in catalogue.list_models()] == sorted(folders)
        assert all(len(m.revisions) == 1 for m in catalogue.list_models())
        uses = Counter(b for m in manifests.values() for b in m.unique_blocks())
        assert catalogue.block_refcounts() == dict(uses)
        shared = [b for b, n in uses.items() if n == len(folders)]
        assert len(shared) >= BASE_TENSORS  # every base tensor (and config.json) is one block
        assert _row_counts(catalogue) == {
            "models": len(folders),
            "revisions": len(folders),
            "tags": len(folders),
            "blocks": len(uses),
            "revision_blocks": sum(uses.values()),
        }
    finally:
        catalogue.close()


@on_both_databases
def test_sizes_beyond_32_bits_round_trip(catalogue_url: str) -> None:
    # A 5 GiB block id is fine for SQLite whatever the column type; PostgreSQL needs BIGINT.
    big = digest_of(b"stands for a 5 GiB slice")
    ref = BlockRef(big.block_id, big.blake3, 5 * 1024**3)
    manifest = ModelManifest("org/huge", (FileManifest("w.bin", ref.size, "0" * 64, (ref,)),))
    catalogue = Catalogue(catalogue_url)
    try:
        catalogue.record_block(ref.block_id, ref.blake3, ref.size)
        catalogue.publish(manifest, is_stored=lambda _: True)
        assert catalogue.known_blocks([ref.block_id]) == {ref.block_id: (ref.blake3, ref.size)}
        assert catalogue.model("org/huge").revisions[0].total_size == ref.size
        assert catalogue.stored_bytes() == (ref.size, ref.size)
    finally:
        catalogue.close()


def test_plain_postgresql_urls_use_psycopg(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    try:
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        assert plain != url
        catalogue = Catalogue(plain)
        assert catalogue.engine.dialect.driver == "psycopg"
        assert catalogue.list_models() == []
        catalogue.close()
    finally:
        postgres_server.drop_database(url)


def test_each_test_database_starts_empty(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.create_database(), postgres_server.create_database()
    try:
        a, b = Catalogue(first), Catalogue(second)
        a.add_placement_run("independent", 0.5, {})
        assert len(a.placement_runs()) == 1 and b.placement_runs() == []
        a.close()
        b.close()
    finally:
        postgres_server.drop_database(first)
        postgres_server.drop_database(second)


def _tensors(*, seed: int, count: int, prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}.{i}.weight": rng.standard_normal((32, 32), dtype=np.float32) for i in range(count)}


def _model_folder(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "toy"}\n')
    return folder


def _row_counts(catalogue: Catalogue) -> dict[str, int]:
    with catalogue.engine.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("models", "revisions", "tags", "blocks", "revision_blocks")
        }
