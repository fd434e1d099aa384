"""The demo: publish the real model and LoRA variants, pull one back as a device would, summarise."""

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from cachenet.cluster.demomodels import REAL_MODEL_NAME, make_lora_adapter, real_model_dir
from cachenet.units import format_bytes
from registry.publish import HttpTarget, publish_path

__all__ = ("DEMO_LORA_VARIANTS", "run_demo")

DEMO_LORA_VARIANTS = 4


async def run_demo(*, origin_url: str, token: str, work_dir: Path) -> dict[str, Any]:
    """Run the demo against a running cluster; returns the summary (with printable lines)."""
    target = HttpTarget(origin_url, token)
    reports = []
    try:
        reports.append(await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False))
        for i in range(DEMO_LORA_VARIANTS):
            folder = make_lora_adapter(work_dir / f"lora-{i}", seed=i, r=8 + 8 * (i % 2))
            reports.append(
                await publish_path(folder, name=f"demo/minilm-lora-{i}", target=target, base=REAL_MODEL_NAME, progress=False)
            )
    finally:
        await target.close()
    base_bytes = reports[0].total_bytes
    # Without block sharing every LoRA variant would be shipped as base + adapter.
    total = sum(r.total_bytes for r in reports) + base_bytes * DEMO_LORA_VARIANTS
    stored = sum(r.stored_bytes for r in reports)
    device_dir = work_dir / "device"
    folder = await asyncio.to_thread(
        snapshot_download, REAL_MODEL_NAME, endpoint=origin_url, cache_dir=device_dir / "hf-cache"
    )
    identical = all(
        hashlib.sha256((Path(folder) / rel).read_bytes()).hexdigest()
        == hashlib.sha256((real_model_dir() / rel).read_bytes()).hexdigest()
        for rel in ("model.safetensors", "config.json", "tokenizer.json")
    )
    lines = [
        f"published {len(reports)} models ({REAL_MODEL_NAME} + {DEMO_LORA_VARIANTS} LoRA variants): "
        f"{format_bytes(total)} as whole models, {format_bytes(stored)} stored, "
        f"{format_bytes(total - stored)} deduplicated",
        f"device pull of {REAL_MODEL_NAME} through the Hugging Face API: "
        f"{'byte-identical' if identical else 'MISMATCH'} ({folder})",
    ]
    return {
        "models": [r.to_json() for r in reports],
        "bytes_as_files": total,
        "bytes_stored": stored,
        "bytes_deduplicated": total - stored,
        "device_pull_identical": identical,
        "lines": lines,
    }
