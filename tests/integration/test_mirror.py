"""The origin as a pull-through Hugging Face mirror; the upstream is a second real cachenet origin."""

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from huggingface_hub import snapshot_download
from prometheus_client.parser import text_string_to_metric_families

from registry.app import create_app
from registry.chunking import cut_folder, list_folder_files
from registry.config import OriginSettings
from registry.keys import catalogue_key, store_key
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def _requests_served(server: TestServer) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{_url(server)}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cachenet_http_requests_total"
    )


def _sha(folder: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for p, rel in list_folder_files(folder)}


async def _start_mirror(
    aiohttp_server: Callable[..., Any], tmp_path: Path, upstream: TestServer, **kw: Any
) -> TestServer:
    settings = OriginSettings(
        data_dir=tmp_path / "mirror", token=OPERATOR_TOKEN, fsync=False, upstream_url=_url(upstream), **kw
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    return server


async def _publish_upstream(upstream: TestServer, tmp_path: Path) -> Path:
    target = HttpTarget(_url(upstream), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    adapter = make_lora_adapter(tmp_path / "lora", seed=5)
    await publish_path(adapter, name="org/minilm-lora", target=target, base=REAL_MODEL_NAME, progress=False)
    await target.close()
    return adapter


async def test_snapshot_download_through_the_mirror_then_no_upstream_request(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    adapter = await _publish_upstream(origin_server, tmp_path)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server)
    folder = await asyncio.to_thread(
        snapshot_download, REAL_MODEL_NAME, endpoint=_url(mirror), cache_dir=tmp_path / "c1"
    )
    assert _sha(Path(folder)) == _sha(real_model_dir())
    before = await _requests_served(origin_server)
    again = await asyncio.to_thread(
        snapshot_download, REAL_MODEL_NAME, endpoint=_url(mirror), cache_dir=tmp_path / "c2"
    )
    assert _sha(Path(again)) == _sha(real_model_dir())
    assert await _requests_served(origin_server) - before == 1  # only the /metrics call itself

    # a LoRA repository whose base is mirrored costs only the adapter's bytes
    store = mirror.app[store_key]
    used = store.used_bytes
    lora = await asyncio.to_thread(
        snapshot_download, "org/minilm-lora", endpoint=_url(mirror), cache_dir=tmp_path / "c3"
    )
    assert _sha(Path(lora)) == _sha(adapter)
    adapter_bytes = sum(
        ref.size for c in cut_folder(adapter) for ref in {r.block_id: r for r in c.manifest.blocks}.values()
    )
    assert store.used_bytes - used == adapter_bytes
    listing = mirror.app[catalogue_key].model("org/minilm-lora")
    assert listing.source == "mirrored" and listing.upstream == _url(origin_server)
    async with aiohttp.ClientSession() as s, s.get(f"{_url(mirror)}/v1/models") as resp:
        models = {m["name"]: m for m in (await resp.json())["models"]}
    assert models["org/minilm-lora"]["source"] == "mirrored"
    # the adapter repository shares no bytes with the base (PEFT files hold only deltas)
    assert models[REAL_MODEL_NAME]["shared_bytes"] == models["org/minilm-lora"]["shared_bytes"]
    upstream_commit = origin_server.app[catalogue_key].resolve_commit(REAL_MODEL_NAME)
    assert mirror.app[catalogue_key].resolve_commit(REAL_MODEL_NAME) == upstream_commit


async def test_upstream_gone_cached_served_uncached_504_moving_ref_last_known(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish_upstream(origin_server, tmp_path)
    upstream_url = _url(origin_server)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server, upstream_revalidate_s=0.0)
    await asyncio.to_thread(snapshot_download, REAL_MODEL_NAME, endpoint=_url(mirror), cache_dir=tmp_path / "c1")
    await origin_server.close()
    folder = await asyncio.to_thread(
        snapshot_download, REAL_MODEL_NAME, endpoint=_url(mirror), cache_dir=tmp_path / "c2"
    )
    assert _sha(Path(folder)) == _sha(real_model_dir())
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/main/config.json") as resp:
            assert resp.status == 200
            assert "last known commit" in resp.headers["X-Cachenet-Stale-Ref"]
        async with s.get(f"{_url(mirror)}/org/minilm-lora/resolve/main/adapter_config.json") as resp:
            assert resp.status == 504
            body = await resp.json()
            assert upstream_url in body["message"] and body["error"] == "UpstreamTimeout"


async def test_deny_rules_refuse_a_repository(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish_upstream(origin_server, tmp_path)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server, deny=("org/*",), max_file_size=1 << 30)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{_url(mirror)}/api/models/org/minilm-lora/revision/main") as resp:
            assert resp.status == 403
            assert "deny" in (await resp.json())["message"]
        async with s.get(f"{_url(mirror)}/api/models/{REAL_MODEL_NAME}/revision/main") as resp:
            assert resp.status == 200


async def test_a_file_over_the_size_limit_is_refused(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish_upstream(origin_server, tmp_path)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server, max_file_size=1_000_000)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/main/model.safetensors") as resp:
            assert resp.status == 403
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/main/config.json") as resp:
            assert resp.status == 200  # one small file is mirrored on its own
    assert mirror.app[store_key].used_bytes < 1_000_000


async def test_an_edge_node_in_front_of_the_mirror_serves_models_the_mirror_never_saw(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish_upstream(origin_server, tmp_path)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server)
    edge = await edge_factory(origin=mirror, capacity_bytes=1 << 30)
    folder = await asyncio.to_thread(snapshot_download, REAL_MODEL_NAME, endpoint=_url(edge), cache_dir=tmp_path / "c")
    assert _sha(Path(folder)) == _sha(real_model_dir())


async def test_the_first_requester_is_streamed_the_bytes_as_they_arrive(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    import time

    await _publish_upstream(origin_server, tmp_path)
    rate = 30_000_000  # a slow upstream: an edge node capped at 30 MB/s in front of the real one
    slow = await edge_factory(origin=origin_server, capacity_bytes=1 << 30, egress_rate=float(rate))
    mirror = await _start_mirror(aiohttp_server, tmp_path, slow)
    expected = (real_model_dir() / "model.safetensors").read_bytes()
    async with aiohttp.ClientSession() as s:
        started = time.perf_counter()
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/main/model.safetensors") as resp:
            assert resp.status == 200
            first = await resp.content.readexactly(1024 * 1024)
            first_byte_s = time.perf_counter() - started
            body = first + await resp.read()
        total_s = time.perf_counter() - started
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    assert first_byte_s < total_s / 3, (first_byte_s, total_s)
    assert total_s >= 0.8 * len(expected) / rate


async def test_require_commit_refuses_moving_refs(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    await _publish_upstream(origin_server, tmp_path)
    commit = origin_server.app[catalogue_key].resolve_commit(REAL_MODEL_NAME)
    mirror = await _start_mirror(aiohttp_server, tmp_path, origin_server, require_commit=True)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/main/config.json") as resp:
            assert resp.status == 422
            assert "pinned by a 40-digit commit" in (await resp.json())["message"]
        async with s.get(f"{_url(mirror)}/{REAL_MODEL_NAME}/resolve/{commit}/config.json") as resp:
            assert resp.status == 200
            assert resp.headers["X-Repo-Commit"] == commit
