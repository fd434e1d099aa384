"""`cachenet pull` against real origin and edge servers on loopback: identity, reuse, failures."""

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from cachenet.blockid import BlockDigest, digest_of
from cachenet.blockstore import BlockStore
from cachenet.cli import EXIT_NOT_FOUND
from cachenet.manifest import ModelManifest
from clients import PullSettings, pull
from registry.keys import catalogue_key
from tests.clients.fakes import flipped_key, flipping_source_app, stalling_source_app
from tests.clients.support import (
    file_hashes,
    free_port,
    publish,
    remote_metric,
    server_process,
    url_of,
)
from tests.conftest import metric
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

FAST = PullSettings(fsync=False)


def _manifest(origin: TestServer, name: str) -> ModelManifest:
    return origin.app[catalogue_key].manifest(name)


def _adapter_only_bytes(origin: TestServer, name: str, *known: str) -> int:
    have = set()
    for other in known:
        have |= set(_manifest(origin, other).unique_blocks())
    return sum(r.size for b, r in _manifest(origin, name).unique_blocks().items() if b not in have)


async def test_real_model_is_byte_identical_and_a_second_lora_variant_fetches_only_its_adapter(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    adapters = {i: make_lora_adapter(tmp_path / f"lora{i}", seed=i) for i in (1, 2)}
    for i, folder in adapters.items():
        await publish(origin_server, folder, f"org/lora-{i}", base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    store = BlockStore(tmp_path / "device", fsync=False)

    base = await pull(
        REAL_MODEL_NAME,
        sources=[url_of(edge)],
        out_dir=tmp_path / "base",
        store=store,
        settings=FAST,
        progress=False,
    )
    assert file_hashes(tmp_path / "base") == file_hashes(real_model_dir())
    assert (
        base.fetched_bytes
        == base.needed_bytes
        == sum(r.size for r in _manifest(origin_server, REAL_MODEL_NAME).unique_blocks().values())
    )
    assert base.reused_bytes == 0
    assert metric(edge, "cachenet_edge_bytes_served_total") == base.fetched_bytes

    first = await pull(
        "org/lora-1",
        sources=[url_of(edge)],
        out_dir=tmp_path / "v1",
        store=store,
        settings=FAST,
        progress=False,
    )
    assert file_hashes(tmp_path / "v1") == {
        **file_hashes(real_model_dir()),
        **file_hashes(adapters[1]),
    }
    assert first.fetched_bytes == _adapter_only_bytes(origin_server, "org/lora-1", REAL_MODEL_NAME)
    assert first.fetched_bytes < 300_000 and first.reused_bytes >= base.needed_bytes

    served = metric(edge, "cachenet_edge_bytes_served_total")
    second = await pull(
        "org/lora-2",
        sources=[url_of(edge)],
        out_dir=tmp_path / "v2",
        store=store,
        settings=FAST,
        progress=False,
    )
    expected = _adapter_only_bytes(origin_server, "org/lora-2", REAL_MODEL_NAME, "org/lora-1")
    assert second.fetched_bytes == expected == metric(edge, "cachenet_edge_bytes_served_total") - served
    adapter_weights = (adapters[2] / "adapter_model.safetensors").stat().st_size
    assert adapter_weights * 0.95 <= second.fetched_bytes <= adapter_weights  # the header block may be shared
    assert file_hashes(tmp_path / "v2") == {
        **file_hashes(real_model_dir()),
        **file_hashes(adapters[2]),
    }
    assert store.check().ok
    assert not list((tmp_path / "v2").rglob("*.tmp"))


async def test_three_sources_one_killed_mid_pull_completes_from_the_others(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    rate = 15e6  # bytes/s per source: the pull takes seconds, long enough to kill one
    a = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, egress_rate=rate)
    b = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, egress_rate=rate)
    args = [
        "edge",
        "serve",
        "--node-id",
        "doomed",
        "--data",
        str(tmp_path / "doomed"),
        "--capacity",
        "1GiB",
        "--origin",
        url_of(origin_server),
        "--egress-rate",
        str(int(rate)),
    ]
    async with server_process(args, tmp_path / "doomed.log", port=free_port()) as doomed:
        task = asyncio.create_task(
            pull(
                REAL_MODEL_NAME,
                sources=[doomed.url, url_of(a), url_of(b)],
                out_dir=tmp_path / "out",
                store=tmp_path / "device",
                settings=FAST,
                progress=False,
            )
        )
        while await remote_metric(doomed.url, "cachenet_edge_bytes_served_total") < 5e6:
            assert not task.done()
            await asyncio.sleep(0.05)
        doomed.kill()  # SIGKILL in the middle of its transfers
        report = await task
    assert file_hashes(tmp_path / "out") == file_hashes(real_model_dir())
    by_url = {s.url: s for s in report.sources}
    assert by_url[doomed.url].bytes > 0 and by_url[doomed.url].errors > 0
    assert by_url[url_of(a)].bytes > 0 and by_url[url_of(b)].bytes > 0
    assert report.retries > 0
    assert report.fetched_bytes == report.needed_bytes
    # Blocks cut off mid-transfer continued elsewhere with a Range: little was received twice.
    assert report.received_bytes < report.needed_bytes * 1.1
    assert BlockStore(tmp_path / "device", fsync=False).check().ok


async def test_a_source_that_flips_bytes_is_refused_and_its_blocks_fetched_elsewhere(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    liar = await aiohttp_server(flipping_source_app(url_of(origin_server), every=2))
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    store = BlockStore(tmp_path / "device", fsync=False)
    report = await pull(
        REAL_MODEL_NAME,
        sources=[url_of(liar), url_of(edge)],
        out_dir=tmp_path / "out",
        store=store,
        settings=FAST,
        progress=False,
    )
    assert file_hashes(tmp_path / "out") == file_hashes(real_model_dir())
    flipped = liar.app[flipped_key]["flipped"]
    assert flipped > 0 and report.refused_blocks == flipped
    assert {s.url: s.corrupt for s in report.sources}[url_of(liar)] == flipped
    assert report.wasted_bytes > 0
    assert store.check().ok


async def test_a_stalled_transfer_moves_to_another_source_and_resumes_with_a_range(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    adapter = make_lora_adapter(tmp_path / "lora", seed=5)
    (adapter / "adapter_config.json").unlink()  # a plain ~300 kB model
    await publish(origin_server, adapter, "org/small")
    staller = await aiohttp_server(stalling_source_app(url_of(origin_server), stall_s=2.0))
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    settings = PullSettings(fsync=False, stall_timeout_s=0.3, concurrency=1)
    report = await pull(
        "org/small",
        sources=[url_of(staller), url_of(edge)],
        out_dir=tmp_path / "out",
        store=tmp_path / "device",
        settings=settings,
        progress=False,
    )
    assert file_hashes(tmp_path / "out") == file_hashes(adapter)
    assert report.retries >= 1
    assert report.elapsed_s < 2.0  # did not wait for the stalled source to wake up
    # the first half came from the staller; only the rest was asked of the edge
    assert metric(edge, "cachenet_edge_bytes_served_total") >= report.needed_bytes // 2


def _recorded_ranges(index_path: Path) -> list[tuple[str, str, int, int]]:
    if not index_path.exists():
        return []
    with contextlib.closing(sqlite3.connect(index_path, timeout=30)) as db:
        try:
            return list(db.execute("SELECT block_id, path, offset, size FROM ranges"))
        except sqlite3.OperationalError:  # the puller is creating the tables
            return []


async def test_a_cli_pull_killed_mid_pull_records_only_verified_blocks_on_disk_and_resumes_from_them(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, egress_rate=20e6)
    store_dir, out = tmp_path / "device", tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "cachenet",
        "pull",
        REAL_MODEL_NAME,
        "--source",
        url_of(edge),
        "--store",
        str(store_dir),
        "--out",
        str(out),
        "--json",
    ]
    first = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    index_path = store_dir / "files.sqlite"
    while len(_recorded_ranges(index_path)) < 5:
        assert first.returncode is None, "the pull finished before it could be interrupted"
        await asyncio.sleep(0.02)
    first.kill()  # SIGKILL: no clean-up of any kind
    await first.wait()
    manifest = _manifest(origin_server, REAL_MODEL_NAME)
    refs = manifest.unique_blocks()
    recorded = _recorded_ranges(index_path)
    assert recorded
    for block_id, path, offset, size in recorded:  # every recorded block is on disk, whole and verified
        with open(path, "rb") as f:
            f.seek(offset)
            assert digest_of(f.read(size)) == BlockDigest(block_id, refs[block_id].blake3, refs[block_id].size)
    held_bytes = sum(refs[b].size for b in {r[0] for r in recorded})
    needed = sum(r.size for r in refs.values())
    assert 0 < held_bytes < needed
    assert not out.exists() or not list(out.glob("*.safetensors"))  # no half-written file under its name
    served = metric(edge, "cachenet_edge_bytes_served_total")

    second = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await second.communicate()
    assert second.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["reused_bytes"] >= held_bytes
    assert report["fetched_bytes"] == needed - report["reused_bytes"]
    assert metric(edge, "cachenet_edge_bytes_served_total") - served == needed - report["reused_bytes"]
    assert file_hashes(out) == file_hashes(real_model_dir())
    assert not list(out.rglob(".*.tmp"))  # the killed pull's temporary files were swept once reused


async def test_cli_reports_an_unknown_model_in_one_line(origin_server: TestServer, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cachenet",
        "pull",
        "org/nope",
        "--source",
        url_of(origin_server),
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == EXIT_NOT_FOUND  # exit statuses are by kind (cachenet/cli.py)
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "org/nope" in lines[0] and lines[0].startswith("cachenet: error:")
