"""`pull --merge-lora` against real servers: merged weights equal numpy's (and PEFT's) merge."""

import asyncio
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from safetensors.numpy import load_file

from clients import PullSettings, pull
from tests.clients.support import file_hashes, publish, url_of
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

FAST = PullSettings(fsync=False)
R, ALPHA = 8, 16.0
TARGETS = ("query", "value")


def _numpy_reference(base: dict[str, np.ndarray], adapter: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """W + (lora_alpha / r) · B · A for every targeted weight, computed here independently."""
    out = dict(base)
    for layer in range(6):
        for target in TARGETS:
            module = f"encoder.layer.{layer}.attention.self.{target}"
            a = adapter[f"base_model.model.{module}.lora_A.weight"]
            b = adapter[f"base_model.model.{module}.lora_B.weight"]
            out[f"{module}.weight"] = base[f"{module}.weight"] + (b @ a) * np.float32(ALPHA / R)
    return out


def _peft_merge(adapter_dir: Path) -> dict[str, np.ndarray]:
    """PEFT's own merge_and_unload of the adapter into the real model (offline)."""
    from peft import PeftModel
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(real_model_dir()))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().numpy() for k, v in merged.state_dict().items()}


# PEFT calls transformers APIs that transformers marks deprecated (FutureWarning).
@pytest.mark.filterwarnings("ignore::FutureWarning")
async def test_merge_lora_writes_base_files_with_merged_weights(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    adapter_dir = make_lora_adapter(tmp_path / "lora", seed=7, r=R, alpha=ALPHA, targets=TARGETS)
    await publish(origin_server, adapter_dir, "org/lora", base=REAL_MODEL_NAME)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 30)
    out = tmp_path / "merged"
    report = await pull(
        "org/lora",
        sources=[url_of(edge)],
        out_dir=out,
        store=tmp_path / "device",
        merge_lora=True,
        settings=FAST,
        progress=False,
    )
    assert report.merged_tensors == 6 * len(TARGETS)
    written, original = file_hashes(out), file_hashes(real_model_dir())
    assert set(written) == set(original)  # the base's files, no adapter files
    assert {k for k in written if written[k] != original[k]} == {"model.safetensors"}
    assert (out / "model.safetensors").stat().st_size == (real_model_dir() / "model.safetensors").stat().st_size

    merged = load_file(str(out / "model.safetensors"))
    base = load_file(str(real_model_dir() / "model.safetensors"))
    reference = _numpy_reference(base, load_file(str(adapter_dir / "adapter_model.safetensors")))
    assert set(merged) == set(base)
    for key, value in reference.items():
        assert merged[key].dtype == base[key].dtype
        np.testing.assert_array_equal(merged[key], value, err_msg=key)
    changed = [k for k in base if not np.array_equal(merged[k], base[k])]
    assert len(changed) == 6 * len(TARGETS)

    if importlib.util.find_spec("peft") is not None:
        peft = await asyncio.to_thread(_peft_merge, adapter_dir)
        assert set(peft) <= set(base) and set(reference) - {"embeddings.position_ids"} <= set(peft)
        for key in peft:  # position_ids is a buffer transformers no longer puts in state_dict
            np.testing.assert_allclose(merged[key], peft[key], rtol=0, atol=2e-7, err_msg=key)


async def test_merge_lora_on_a_model_without_base_is_refused(origin_server: TestServer, tmp_path: Path) -> None:
    plain = make_lora_adapter(tmp_path / "plain", seed=1)
    (plain / "adapter_config.json").unlink()
    await publish(origin_server, plain, "org/plain")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cachenet",
        "pull",
        "org/plain",
        "--merge-lora",
        "--source",
        url_of(origin_server),
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 2 and b"no base model" in stderr
    assert not (tmp_path / "o").exists()
