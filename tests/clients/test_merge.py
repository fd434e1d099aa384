"""LoRA merge arithmetic and planning, checked against torch for the half-precision dtypes."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cachenet.errors import BadInput
from clients.merge import (
    LoraSpec,
    apply_merge,
    decode_tensor,
    encode_tensor,
    merged_weight,
    plan_merge,
)
from clients.tensorfile import TensorFileInfo, TensorInfo


def _info(path: str, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> TensorFileInfo:
    out, position = [], 64
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "BF16": 2}[dtype]
        out.append(TensorInfo(name, dtype, shape, position, position + size))
        position += size
    return TensorFileInfo(path, position, 64, tuple(out), {})


def _torch_merge(w: torch.Tensor, a: np.ndarray, b: np.ndarray, scale: float) -> torch.Tensor:
    # PEFT on CPU: delta in float32, cast to the weight's dtype, added in that dtype.
    delta = (torch.from_numpy(b) @ torch.from_numpy(a)) * scale
    return w + delta.to(w.dtype)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_merged_weight_matches_torch_in_the_base_dtype(dtype: str) -> None:
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((16, 12), dtype=np.float32)
    a = rng.standard_normal((4, 12), dtype=np.float32) * 0.1
    b = rng.standard_normal((16, 4), dtype=np.float32) * 0.1
    tw = torch.from_numpy(w32).to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype])
    expected = _torch_merge(tw, a, b, 2.0)
    info = TensorInfo("w", dtype, (16, 12), 0, 16 * 12 * (4 if dtype == "F32" else 2))
    if dtype == "BF16":
        w = np.frombuffer(tw.view(torch.int16).numpy().tobytes(), dtype="<u2").reshape(16, 12)
    else:
        w = tw.numpy()
    got = merged_weight(w, a, b, scale=2.0, dtype=dtype)
    raw = encode_tensor(got, info)
    if dtype == "BF16":
        want = expected.view(torch.int16).numpy().tobytes()
    else:
        want = expected.numpy().tobytes()
    assert raw == want


def test_fan_in_fan_out_and_embedding_adapters_merge_transposed() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 16), dtype=np.float32)  # (in, out) as Conv1D stores it
    a = rng.standard_normal((4, 12), dtype=np.float32)
    b = rng.standard_normal((16, 4), dtype=np.float32)
    got = merged_weight(w, a, b, scale=0.5, transpose=True)
    np.testing.assert_array_equal(got, w + ((b @ a) * np.float32(0.5)).T)


def test_scale_follows_rslora_and_the_per_module_patterns() -> None:
    spec = LoraSpec.from_config(
        {
            "r": 16,
            "lora_alpha": 32,
            "rank_pattern": {"value": 4},
            "alpha_pattern": {"layer.1.attention.self.query": 8},
        },
        None,
    )
    assert spec.scale_for("encoder.layer.0.attention.self.query") == 2.0
    assert spec.scale_for("encoder.layer.0.attention.self.value") == 8.0
    assert spec.scale_for("encoder.layer.1.attention.self.query") == 0.5
    rs = LoraSpec.from_config({"r": 16, "lora_alpha": 8, "use_rslora": True}, None)
    assert rs.scale_for("x") == 2.0
    assert LoraSpec.from_json_bytes(None, {"r": 4, "lora_alpha": 8}).scale_for("x") == 2.0
    with pytest.raises(BadInput):
        LoraSpec.from_json_bytes(b"[1]", None)
    with pytest.raises(BadInput):
        LoraSpec.from_config({"peft_type": "IA3"}, None)
    with pytest.raises(BadInput):
        LoraSpec.from_config({"r": 0}, None)


def test_plan_merge_pairs_a_and_b_and_replaces_saved_modules() -> None:
    base = _info(
        "model.safetensors",
        {
            "encoder.q.weight": ("F32", (8, 6)),
            "encoder.q.bias": ("F32", (8,)),
            "classifier.weight": ("F32", (2, 8)),
        },
    )
    adapter = _info(
        "adapter_model.safetensors",
        {
            "base_model.model.encoder.q.lora_A.weight": ("F32", (2, 6)),
            "base_model.model.encoder.q.lora_B.weight": ("F32", (8, 2)),
            "base_model.model.classifier.weight": ("F32", (2, 8)),
        },
    )
    ops = plan_merge(adapter, [base], LoraSpec(r=2, lora_alpha=4.0))
    by_target = {op.target.name: op for op in ops}
    assert set(by_target) == {"encoder.q.weight", "classifier.weight"}
    assert by_target["encoder.q.weight"].scale == 2.0 and by_target["classifier.weight"].replacement is not None


@pytest.mark.parametrize(
    ("adapter", "why"),
    [
        ({"base_model.model.encoder.q.lora_A.weight": ("F32", (2, 6))}, "both be present"),
        (
            {
                "base_model.model.encoder.k.lora_A.weight": ("F32", (2, 6)),
                "base_model.model.encoder.k.lora_B.weight": ("F32", (8, 2)),
            },
            "no weight",
        ),
        (
            {
                "base_model.model.encoder.q.lora_A.weight": ("F32", (2, 5)),
                "base_model.model.encoder.q.lora_B.weight": ("F32", (8, 2)),
            },
            "does not fit",
        ),
    ],
)
def test_plan_merge_refuses_adapters_that_do_not_fit(adapter: dict[str, tuple[str, tuple[int, ...]]], why: str) -> None:
    base = _info("model.safetensors", {"encoder.q.weight": ("F32", (8, 6))})
    with pytest.raises(BadInput, match=why):
        plan_merge(_info("adapter_model.safetensors", adapter), [base], LoraSpec(r=2, lora_alpha=2.0))
    with pytest.raises(BadInput, match="DoRA"):
        plan_merge(_info("a", {}), [base], LoraSpec(r=2, lora_alpha=2.0, use_dora=True))


def test_apply_merge_rewrites_only_the_targeted_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 6), dtype=np.float32)
    other = rng.standard_normal((5,), dtype=np.float32)
    path.write_bytes(b"\0" * 64 + w.tobytes() + other.tobytes())
    base = _info("f.bin", {"q.weight": ("F32", (8, 6)), "other": ("F32", (5,))})
    a = rng.standard_normal((2, 6), dtype=np.float32)
    b = rng.standard_normal((8, 2), dtype=np.float32)
    adapter = _info(
        "adapter",
        {
            "base_model.model.q.lora_A.weight": ("F32", (2, 6)),
            "base_model.model.q.lora_B.weight": ("F32", (8, 2)),
        },
    )
    blobs = {
        "base_model.model.q.lora_A.weight": a.tobytes(),
        "base_model.model.q.lora_B.weight": b.tobytes(),
    }
    ops = plan_merge(adapter, [base], LoraSpec(r=2, lora_alpha=2.0))
    fd = os.open(path, os.O_RDWR)
    try:
        apply_merge(fd, ops, lambda t: blobs[t.name])
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:64] == b"\0" * 64 and data[64 + w.nbytes :] == other.tobytes()
    np.testing.assert_array_equal(
        decode_tensor(data[64 : 64 + w.nbytes], base.tensors[0]), w + (b @ a) * np.float32(1.0)
    )
