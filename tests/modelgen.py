"""Test data made on the spot: the real model's folder, PEFT LoRA adapters for it, fine-tunes."""

import json
import shutil
from pathlib import Path
from typing import Final

import numpy as np
from safetensors.numpy import load_file, save_file

from cluster.demomodels import REAL_MODEL_NAME, make_lora_adapter, real_model_dir

__all__ = (
    "MALFORMED_SAFETENSORS",
    "REAL_MODEL_NAME",
    "make_finetune",
    "make_lora_adapter",
    "real_model_dir",
    "write_safetensors",
)

LAYERS: Final = 6

# name -> (header as bytes or dict, data region, header length to write or None for the true one)
MALFORMED_SAFETENSORS: Final[dict[str, tuple[bytes | dict[str, object], bytes, int | None]]] = {
    "header length beyond the file": (b'{"a":1}', b"", 10_000),
    "bad JSON": (b"{not json", b"", None),
    "unknown dtype": ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "offsets out of range": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None),
    "overlapping": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
        None,
    ),
    "shape does not match length": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None),
    "dtype does not match length": ({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None),
    "gap before a tensor": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None),
    "trailing bytes": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None),
    "negative shape": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "not an object": (b"[1, 2]", b"", None),
    "huge header length": (b"{}", b"", 2**63),
}


def make_finetune(folder: Path, *, seed: int, frozen_layers: int) -> Path:
    """A copy of the real model whose layers from `frozen_layers` up (and the pooler) are changed."""
    src = real_model_dir()
    shutil.copytree(src, folder)
    tensors = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(seed)
    for name, value in tensors.items():
        top = name.startswith("pooler.") or any(
            name.startswith(f"encoder.layer.{i}.") for i in range(frozen_layers, LAYERS)
        )
        if top and value.dtype == np.float32:
            tensors[name] = value + rng.standard_normal(value.shape, dtype=np.float32) * 1e-3
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_safetensors(path: Path, header: bytes | dict[str, object], data: bytes, *, length: int | None = None) -> Path:
    """Write a (possibly malformed) safetensors file from a raw header and data region."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + raw + data)
    return path
