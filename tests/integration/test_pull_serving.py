"""Serving: the loader fetches only touched tensors; a pulled model gives the same embeddings."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from safetensors.numpy import load_file

from clients import PullSettings, open_model_async, pull
from tests.clients.support import file_hashes, publish, url_of
from tests.conftest import metric
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

FAST = PullSettings(fsync=False)
SENTENCES = (
    "Edge caches keep shared parameter blocks close to devices.",
    "A LoRA adapter is a small delta on top of a frozen backbone.",
    "The quick brown fox jumps over the lazy dog.",
)


def _served(edge: TestServer) -> tuple[float, float]:
    return metric(edge, "cachenet_edge_bytes_served_total"), metric(edge, "cachenet_edge_block_requests_total")


async def test_open_model_fetches_only_the_blocks_of_touched_tensors(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    original = load_file(str(real_model_dir() / "model.safetensors"))
    model = await open_model_async(REAL_MODEL_NAME, sources=[url_of(edge)], store=tmp_path / "device", settings=FAST)
    try:
        header = model.manifest.file("model.safetensors").blocks[0]
        assert _served(edge) == (header.size, 1)  # opening reads the header block only
        assert set(model) == set(original)

        name = "encoder.layer.3.attention.self.query.weight"
        value = await model.get_async(name)
        np.testing.assert_array_equal(value, original[name])
        assert not value.flags.writeable
        assert _served(edge) == (
            header.size + model.info(name).size,
            1 + len(model.blocks_of(name)),
        )
        await model.get_async(name)  # touched again: read from the local store
        assert _served(edge) == (header.size + model.info(name).size, 2)

        # the synchronous mapping API, from a thread (this loop serves the edge node)
        bias = await asyncio.to_thread(model.__getitem__, "encoder.layer.3.attention.self.query.bias")
        np.testing.assert_array_equal(bias, original["encoder.layer.3.attention.self.query.bias"])
        with pytest.raises(KeyError):
            await asyncio.to_thread(model.__getitem__, "no.such.tensor")

        big = "embeddings.word_embeddings.weight"
        assert await model.prefetch_async([big]) == model.info(big).size
        held = model.fetched_bytes
        report = await model.materialize_async(tmp_path / "out")
        assert file_hashes(tmp_path / "out") == file_hashes(real_model_dir())
        needed = sum(r.size for r in model.manifest.unique_blocks().values())
        assert report.reused_bytes == held and report.fetched_bytes == needed - held
        assert _served(edge)[0] == needed
    finally:
        await model.aclose()

    as_torch = await open_model_async(
        REAL_MODEL_NAME,
        sources=[url_of(edge)],
        store=tmp_path / "device",
        framework="pt",
        settings=FAST,
    )
    try:
        tensor = await as_torch.get_async(name)
        assert tensor.dtype.is_floating_point and tuple(tensor.shape) == original[name].shape
        np.testing.assert_array_equal(tensor.numpy(), original[name])
        assert as_torch.fetched_bytes == 0  # everything was in the local store
    finally:
        await as_torch.aclose()


async def test_open_model_of_a_lora_model_maps_base_and_adapter_tensors(
    origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    adapter = make_lora_adapter(tmp_path / "lora", seed=2)
    await publish(origin_server, adapter, "org/lora", base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    model = await open_model_async(
        "org/lora",
        sources=[url_of(edge)],
        store=tmp_path / "device",
        prefetch=["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"],
        settings=FAST,
    )
    try:
        lora = load_file(str(adapter / "adapter_model.safetensors"))
        assert set(lora) < set(model) and "encoder.layer.0.attention.self.query.weight" in model
        key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
        served = _served(edge)
        np.testing.assert_array_equal(await model.get_async(key), lora[key])
        assert _served(edge) == served  # prefetched when opened
    finally:
        await model.aclose()


@pytest.mark.filterwarnings("ignore::FutureWarning")
async def test_sentence_transformers_on_a_pulled_model_gives_the_original_embeddings(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    adapter = make_lora_adapter(tmp_path / "lora", seed=4, alpha=64.0)
    await publish(origin_server, adapter, "org/lora", base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    store = tmp_path / "device"
    await pull(
        REAL_MODEL_NAME,
        sources=[url_of(edge)],
        out_dir=tmp_path / "plain",
        store=store,
        settings=FAST,
        progress=False,
    )
    await pull(
        "org/lora",
        sources=[url_of(edge)],
        out_dir=tmp_path / "merged",
        store=store,
        merge_lora=True,
        settings=FAST,
        progress=False,
    )

    def embed(folder: Path) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu")
        return np.asarray(model.encode(list(SENTENCES), convert_to_numpy=True))

    original = await asyncio.to_thread(embed, real_model_dir())
    pulled = await asyncio.to_thread(embed, tmp_path / "plain")
    merged = await asyncio.to_thread(embed, tmp_path / "merged")
    np.testing.assert_array_equal(pulled, original)
    # the merged variant loads like any model and its weights really changed
    assert merged.shape == original.shape and np.isfinite(merged).all()
    assert not np.array_equal(merged, original)
