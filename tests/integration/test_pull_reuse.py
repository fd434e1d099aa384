"""Pulled files as the device's block store: hard-linked reuse, and edited outputs never reused as verified."""

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from clients import PullSettings, pull
from tests.clients.support import file_hashes, publish, url_of
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

FAST = PullSettings(fsync=False)
WEIGHTS = "model.safetensors"


async def _setup(origin: TestServer, edge_factory: Callable[..., Any], tmp_path: Path) -> tuple[str, dict[int, Path]]:
    await publish(origin, real_model_dir(), REAL_MODEL_NAME)
    adapters = {i: make_lora_adapter(tmp_path / f"lora{i}", seed=i) for i in (1, 2)}
    for i, folder in adapters.items():
        await publish(origin, folder, f"org/lora-{i}", base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin, capacity_bytes=1 << 30)
    return url_of(edge), adapters


async def test_a_lora_switch_hard_links_the_base_files_read_only_and_fetches_only_the_adapter(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    edge, adapters = await _setup(origin_server, edge_factory, tmp_path)
    device = tmp_path / "device"
    base = await pull(REAL_MODEL_NAME, sources=[edge], out_dir=tmp_path / "base", store=device, settings=FAST)
    switch = await pull("org/lora-1", sources=[edge], out_dir=tmp_path / "v1", store=device, settings=FAST)
    assert file_hashes(tmp_path / "v1") == {**file_hashes(real_model_dir()), **file_hashes(adapters[1])}
    first, linked = tmp_path / "base" / WEIGHTS, tmp_path / "v1" / WEIGHTS
    assert first.stat().st_ino == linked.stat().st_ino  # the base's bytes were not written again
    assert stat.S_IMODE(linked.stat().st_mode) & 0o222 == 0  # read-only
    assert switch.fetched_bytes < 300_000 and switch.reused_bytes >= base.needed_bytes
    assert not list((tmp_path / "v1").rglob(".*.tmp"))


async def test_an_output_edited_after_the_pull_is_never_reused_as_verified_blocks(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    edge, adapters = await _setup(origin_server, edge_factory, tmp_path)
    device = tmp_path / "device"
    await pull(REAL_MODEL_NAME, sources=[edge], out_dir=tmp_path / "base", store=device, settings=FAST)
    await pull("org/lora-1", sources=[edge], out_dir=tmp_path / "v1", store=device, settings=FAST)
    # The user edits the hard-linked weights in place (both names see it), same size, old mtime.
    edited = tmp_path / "v1" / WEIGHTS
    before = edited.stat()
    edited.chmod(0o644)
    with open(edited, "r+b") as f:
        f.seek(before.st_size // 2)
        f.write(b"\x00" * 4096)
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))

    again = await pull("org/lora-2", sources=[edge], out_dir=tmp_path / "v2", store=device, settings=FAST)
    assert file_hashes(tmp_path / "v2") == {**file_hashes(real_model_dir()), **file_hashes(adapters[2])}
    assert (tmp_path / "v2" / WEIGHTS).stat().st_ino != before.st_ino
    # The edited block (at least) was fetched again; the rest was copied out of the earlier files.
    adapter_bytes = (adapters[2] / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < again.fetched_bytes < before.st_size

    # Deleting every earlier output leaves nothing to reuse; the pull still completes, byte-identical.
    for folder in ("base", "v1", "v2"):
        for p in (tmp_path / folder).rglob("*"):
            if p.is_file():
                p.unlink()
    last = await pull(REAL_MODEL_NAME, sources=[edge], out_dir=tmp_path / "v3", store=device, settings=FAST)
    assert file_hashes(tmp_path / "v3") == file_hashes(real_model_dir())
    assert last.reused_bytes == 0
