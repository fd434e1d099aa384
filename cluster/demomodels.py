"""Models for the demo and tests: the real all-MiniLM-L6-v2 folder and PEFT LoRA adapters for it."""

import json
from pathlib import Path
from typing import Final

import numpy as np
from safetensors.numpy import save_file

from cachenet.knowledge.embedder import REAL_MODEL_NAME, real_model_dir

__all__ = ("REAL_MODEL_NAME", "make_lora_adapter", "real_model_dir")

MINILM_HIDDEN: Final = 384
MINILM_LAYERS: Final = 6


def make_lora_adapter(
    folder: Path,
    *,
    seed: int,
    r: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = ("query", "value"),
    base_name: str = REAL_MODEL_NAME,
) -> Path:
    """Write a PEFT LoRA adapter for all-MiniLM-L6-v2: real key names and shapes, random values."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(MINILM_LAYERS):
        for target in targets:
            prefix = f"base_model.model.encoder.layer.{layer}.attention.self.{target}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, MINILM_HIDDEN), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((MINILM_HIDDEN, r), dtype=np.float32) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": list(targets),
        "base_model_name_or_path": base_name,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
