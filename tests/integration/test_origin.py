"""The origin end to end on real files: publish over HTTP, download back byte for byte.

Every test runs with the catalogue on SQLite and on PostgreSQL.
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from huggingface_hub import hf_hub_download, snapshot_download

from cachenet.blockid import digest_of
from registry.catalogue import Catalogue
from registry.chunking import cut_folder, list_folder_files
from registry.config import OriginSettings
from registry.keys import catalogue_key, store_key
from registry.publish import HttpTarget, PublishReport, publish_path
from tests.conftest import DATABASES, OPERATOR_TOKEN
from tests.modelgen import REAL_MODEL_NAME, make_finetune, make_lora_adapter, real_model_dir

pytestmark = pytest.mark.parametrize("catalogue_backend", DATABASES, indirect=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _publish(server: TestServer, path: Path, name: str, **kw: object) -> PublishReport:
    target = HttpTarget(str(server.make_url("")), OPERATOR_TOKEN)
    try:
        return await publish_path(path, name=name, target=target, progress=False, **kw)  # type: ignore[arg-type]
    finally:
        await target.close()


async def test_real_model_round_trip_through_device_api_and_huggingface_hub(
    origin_server: TestServer, tmp_path: Path
) -> None:
    src = real_model_dir()
    report = await _publish(origin_server, src, REAL_MODEL_NAME)
    assert report.stored_bytes == report.unique_bytes > 80_000_000
    base = str(origin_server.make_url("")).rstrip("/")
    originals = {rel: _sha256(p) for p, rel in list_folder_files(src)}
    async with aiohttp.ClientSession() as session:
        for rel, sha in originals.items():
            url = f"{base}/v1/models/{REAL_MODEL_NAME}/revisions/main/files/{rel}"
            async with session.get(url) as resp:
                assert resp.status == 200
                body = await resp.read()
                assert hashlib.sha256(body).hexdigest() == sha, rel
                assert resp.headers["ETag"] == f'"{sha}"'
        # a range that crosses block boundaries of the safetensors file
        whole = (src / "model.safetensors").read_bytes()
        url = f"{base}/{REAL_MODEL_NAME}/resolve/main/model.safetensors"
        async with session.get(url, headers={"Range": "bytes=1000-5000000"}) as resp:
            assert resp.status == 206
            assert await resp.read() == whole[1000:5000001]

    cache = tmp_path / "hf-cache"
    folder = await asyncio.to_thread(snapshot_download, REAL_MODEL_NAME, endpoint=base, cache_dir=cache)
    got = {rel: _sha256(p) for p, rel in list_folder_files(Path(folder))}
    assert got == originals
    one = await asyncio.to_thread(
        hf_hub_download, REAL_MODEL_NAME, "config.json", endpoint=base, cache_dir=tmp_path / "hf2"
    )
    assert _sha256(Path(one)) == originals["config.json"]


async def test_lora_adapters_cost_only_their_own_bytes(origin_server: TestServer, tmp_path: Path) -> None:
    store = origin_server.app[store_key]
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    before = store.used_bytes
    adapters = [make_lora_adapter(tmp_path / f"lora{i}", seed=i) for i in range(5)]
    reports = [await _publish(origin_server, a, f"org/lora-{i}", base=REAL_MODEL_NAME) for i, a in enumerate(adapters)]
    # Expected growth: the distinct blocks of the five adapters (same header layout and
    # same config across adapters are stored once), nothing of the base.
    distinct: dict[str, int] = {}
    for a in adapters:
        for cut in cut_folder(a):
            for ref in cut.manifest.blocks:
                distinct[ref.block_id] = ref.size
    growth = store.used_bytes - before
    assert growth == sum(distinct.values()) == sum(r.stored_bytes for r in reports)
    adapter_tensor_bytes = 5 * 6 * 2 * 2 * 8 * 384 * 4  # adapters × layers × (q,v) × (A,B) × r × hidden × f32
    assert adapter_tensor_bytes < growth < adapter_tensor_bytes + 20_000
    manifest = origin_server.app[catalogue_key].manifest("org/lora-3")
    assert manifest.base is not None and manifest.base.name == REAL_MODEL_NAME
    assert manifest.metadata["lora"]["r"] == 8


async def test_finetunes_sharing_frozen_layers_store_only_changed_tensors(
    origin_server: TestServer, tmp_path: Path
) -> None:
    from safetensors import safe_open

    store = origin_server.app[store_key]
    await _publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    for seed in (1, 2):
        folder = make_finetune(tmp_path / f"ft{seed}", seed=seed, frozen_layers=4)
        with safe_open(str(folder / "model.safetensors"), "np") as f:
            changed = sum(
                f.get_tensor(k).nbytes
                for k in f.keys()  # noqa: SIM118 - safe_open is not a dict
                if k.startswith(("encoder.layer.4.", "encoder.layer.5.", "pooler."))
            )
        before = store.used_bytes
        report = await _publish(origin_server, folder, f"org/finetune-{seed}")
        assert store.used_bytes - before == report.stored_bytes == changed
        assert report.deduplicated_bytes == report.total_bytes - changed


async def test_upload_with_wrong_bytes_is_refused_and_nothing_changes(origin_server: TestServer) -> None:
    store = origin_server.app[store_key]
    base = str(origin_server.make_url("")).rstrip("/")
    good = digest_of(b"good bytes")
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        url = f"{base}/v1/blocks/{good.block_id}"
        async with session.put(url, data=b"evil bytes", headers={**auth, "X-Block-Blake3": good.blake3}) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == "BlockCorrupt"
        async with session.put(url, data=b"good bytes", headers={**auth, "X-Block-Blake3": "0" * 64}) as resp:
            assert resp.status == 409
        async with session.put(url, data=b"good bytes", headers={"X-Block-Blake3": good.blake3}) as resp:
            assert resp.status == 401
        async with session.put(
            f"{base}/v1/blocks/..%2F..%2Fx", data=b"x", headers={**auth, "X-Block-Blake3": good.blake3}
        ) as resp:
            assert resp.status in (404, 422)
        assert store.used_bytes == 0 and len(store) == 0 and store.check().ok
        async with session.put(url, data=b"good bytes", headers={**auth, "X-Block-Blake3": good.blake3}) as resp:
            assert resp.status == 201
        async with session.put(url, data=b"good bytes", headers={**auth, "X-Block-Blake3": "f" * 64}) as resp:
            assert resp.status == 409  # same id, other BLAKE3: a collision
            assert (await resp.json())["error"] == "HashCollision"


async def test_manifest_naming_missing_blocks_is_refused(origin_server: TestServer, tmp_path: Path) -> None:
    from cachenet.manifest import ModelManifest

    folder = make_lora_adapter(tmp_path / "lora", seed=3)
    manifest = ModelManifest("org/orphan", tuple(c.manifest for c in cut_folder(folder)))
    base = str(origin_server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as session:
        async with session.post(f"{base}/v1/models/org/orphan/revisions", data=manifest.to_bytes()) as resp:
            assert resp.status == 422
            assert (await resp.json())["error"] == "MissingBlocks"
        async with session.get(f"{base}/v1/models") as resp:
            assert (await resp.json())["models"] == []


async def test_origin_restarted_on_the_same_data_serves_everything(
    origin_settings: OriginSettings,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> None:
    from registry.app import create_app

    first = await aiohttp_server(create_app(origin_settings))
    await _publish(first, real_model_dir(), REAL_MODEL_NAME)
    adapter = make_lora_adapter(tmp_path / "lora", seed=9)
    await _publish(first, adapter, "org/lora", base=REAL_MODEL_NAME)
    await first.close()
    second = await aiohttp_server(create_app(origin_settings))
    base = str(second.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for name, folder in ((REAL_MODEL_NAME, real_model_dir()), ("org/lora", adapter)):
            for path, rel in list_folder_files(folder):
                async with session.get(f"{base}/{name}/resolve/main/{rel}") as resp:
                    assert resp.status == 200
                    assert hashlib.sha256(await resp.read()).hexdigest() == _sha256(path)
    store = second.app[store_key]
    catalogue: Catalogue = second.app[catalogue_key]
    assert store.check().ok and catalogue.check(store.has).ok


@pytest.mark.parametrize(
    "route", ["/v1/models/../etc/revisions/main", "/v1/models/org/m/revisions/..", "/org/m/resolve/main/../../secret"]
)
async def test_traversal_in_names_and_paths_is_refused(origin_server: TestServer, route: str) -> None:
    base = str(origin_server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session, session.get(base + route) as resp:
        assert resp.status in (404, 422)
