"""PEFT LoRA adapter folders: recognising them and reading what a merge needs from their config."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cachenet.errors import BadInput

__all__ = ("ADAPTER_CONFIG", "LoraConfigInfo", "read_lora_config")

ADAPTER_CONFIG: Final = "adapter_config.json"


@dataclass(frozen=True, slots=True)
class LoraConfigInfo:
    """The parts of a PEFT adapter config that placement and merging need."""

    base_model: str | None
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    peft_type: str

    def to_metadata(self) -> dict[str, Any]:
        """JSON for the manifest's `metadata.lora`."""
        return {
            "peft_type": self.peft_type,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "base_model_name_or_path": self.base_model,
        }


def read_lora_config(folder: Path) -> LoraConfigInfo | None:
    """The adapter config of a PEFT folder, or None when `folder` is not an adapter."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: cannot read the adapter config: {e}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: the adapter config must be a JSON object")
    peft_type = str(doc.get("peft_type", "LORA"))
    if peft_type.upper() != "LORA":
        raise BadInput(f"{path}: peft_type {peft_type!r} is not supported; only LORA adapters")
    try:
        r = int(doc.get("r", 8))
        alpha = float(doc.get("lora_alpha", r))
    except (TypeError, ValueError):
        raise BadInput(f"{path}: r and lora_alpha must be numbers") from None
    if r <= 0:
        raise BadInput(f"{path}: r must be positive, got {r}")
    targets = doc.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    base = doc.get("base_model_name_or_path")
    return LoraConfigInfo(
        base_model=str(base) if base else None,
        r=r,
        lora_alpha=alpha,
        target_modules=tuple(str(t) for t in targets),
        peft_type=peft_type.upper(),
    )
