"""A full disk under an edge node: a clear 507, no partial block visible, and the node keeps serving."""

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cachenet.edge.keys import cache_key
from registry.keys import catalogue_key
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN
from tests.modelgen import REAL_MODEL_NAME, real_model_dir


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount tmpfs in CI: {result.stderr.decode()}")
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_is_a_clear_error_and_the_node_keeps_serving(
    small_disk: Path, origin_server: TestServer, edge_factory: Callable[..., Any]
) -> None:
    target = HttpTarget(str(origin_server.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    await target.close()
    # The node believes it has 1 GiB; the disk under it has 24 MB.
    # No cut-through, so the error can still become the response's status.
    edge = await edge_factory(
        origin=origin_server, capacity_bytes=1 << 30, data_dir=small_disk / "edge", cut_through_min_bytes=1 << 30
    )
    base = str(edge.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/{REAL_MODEL_NAME}/resolve/main/config.json") as resp:
            assert resp.status == 200
            config = await resp.read()
        big = max(
            origin_server.app[catalogue_key].manifest(REAL_MODEL_NAME).file("model.safetensors").blocks,
            key=lambda r: r.size,
        )
        async with s.get(f"{base}/v1/blocks/{big.block_id}") as resp:
            assert resp.status == 507
            assert "disk full" in (await resp.json())["message"]
        async with s.get(f"{base}/{REAL_MODEL_NAME}/resolve/main/model.safetensors") as resp:
            # The file's first block fits, so the status line is out before the disk fills:
            # the body is cut short rather than completed with missing bytes.
            assert resp.status == 200, await resp.text()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with s.get(f"{base}/{REAL_MODEL_NAME}/resolve/main/config.json") as resp:
            assert resp.status == 200 and await resp.read() == config
        async with s.get(f"{base}/healthz") as resp:
            assert resp.status == 200
    report = edge.app[cache_key].store.check()
    assert report.ok, report
