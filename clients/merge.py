"""Merging a PEFT LoRA adapter into its base weights on the device: W' = W + scale · B · A.

For each targeted module PEFT saves `base_model.model.<module>.lora_A.weight` (r × in) and
`...lora_B.weight` (out × r); the base weight is `<module>.weight` (out × in) and
scale = lora_alpha / r (lora_alpha / √r with `use_rslora`; per-module `rank_pattern` and
`alpha_pattern` respected). Embedding adapters (`lora_embedding_A/B`) merge transposed.
Other adapter tensors (`modules_to_save`, trained biases) replace the base tensor of the
same name. The delta is computed in float32 (float64 for F64 weights), cast to the base
weight's dtype and added in that dtype, as PEFT's `merge_and_unload` does. Merged weights
keep their dtype and shape, so the merged file has the base file's exact layout: it is
the base file with the targeted tensors' bytes overwritten.
"""

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from cachenet.errors import BadInput
from clients.tensorfile import TensorFileInfo, TensorInfo, numpy_dtype

__all__ = (
    "ADAPTER_FILES",
    "LoraSpec",
    "MergeOp",
    "apply_merge",
    "decode_tensor",
    "encode_tensor",
    "merged_weight",
    "plan_merge",
)

ADAPTER_FILES: Final = frozenset({"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"})
_PEFT_PREFIX: Final = "base_model.model."
_LORA_KEY: Final = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """The parts of a PEFT LoRA config a merge needs."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] = ()
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None) -> "LoraSpec":
        """From the adapter's `adapter_config.json`, else the manifest's `metadata.lora`."""
        doc = dict(metadata or {})
        doc.update(config or {})
        if str(doc.get("peft_type", "LORA")).upper() != "LORA":
            raise BadInput(f"peft_type {doc.get('peft_type')!r} cannot be merged; only LORA adapters")
        try:
            r = int(doc.get("r", 8))
            alpha = float(doc.get("lora_alpha", r))
            ranks = {str(k): int(v) for k, v in (doc.get("rank_pattern") or {}).items()}
            alphas = {str(k): float(v) for k, v in (doc.get("alpha_pattern") or {}).items()}
        except (TypeError, ValueError, AttributeError):
            raise BadInput("the LoRA config's r, lora_alpha, rank_pattern and alpha_pattern must be numbers") from None
        if r <= 0:
            raise BadInput(f"LoRA rank r must be positive, got {r}")
        targets = doc.get("target_modules") or ()
        targets = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
        return cls(
            r,
            alpha,
            targets,
            bool(doc.get("use_rslora")),
            bool(doc.get("fan_in_fan_out")),
            bool(doc.get("use_dora")),
            ranks,
            alphas,
        )

    @classmethod
    def from_json_bytes(cls, data: bytes | None, metadata: Mapping[str, Any] | None) -> "LoraSpec":
        """Parse `adapter_config.json` bytes (None when the adapter has none)."""
        config = None
        if data is not None:
            try:
                config = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadInput(f"adapter_config.json is not JSON: {e}") from None
            if not isinstance(config, dict):
                raise BadInput("adapter_config.json must be a JSON object")
        return cls.from_config(config, metadata)

    def scale_for(self, module: str) -> float:
        """lora_alpha / r for one module (rsLoRA: / √r), with the per-module patterns."""
        r = float(_pattern_value(self.rank_pattern, module, self.r))
        alpha = float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


@dataclass(frozen=True, slots=True)
class MergeOp:
    """One base tensor to rewrite: either W + scale·B·A, or replaced by an adapter tensor."""

    base_file: str
    target: TensorInfo
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    scale: float = 1.0
    transpose: bool = False
    replacement: TensorInfo | None = None


def plan_merge(adapter: TensorFileInfo, bases: Sequence[TensorFileInfo], spec: LoraSpec) -> list[MergeOp]:
    """Which base tensors change and how; raises `BadInput` for anything that cannot be merged."""
    if spec.use_dora:
        raise BadInput("DoRA adapters (use_dora) cannot be merged here; merge them with PEFT")
    base_tensors: dict[str, tuple[str, TensorInfo]] = {}
    for info in bases:
        for t in info.tensors:
            base_tensors[t.name] = (info.path, t)
    pairs: dict[str, dict[str, TensorInfo]] = {}
    ops: list[MergeOp] = []
    for t in adapter.tensors:
        name = t.name.removeprefix(_PEFT_PREFIX)
        m = _LORA_KEY.match(name)
        if m is not None:
            pairs.setdefault(m["module"], {})[m["kind"]] = t
            continue
        path, target = _find_base(base_tensors, name, t.name)
        if target.shape != t.shape:
            raise BadInput(f"adapter tensor {t.name} {list(t.shape)} cannot replace {target.name} {list(target.shape)}")
        ops.append(MergeOp(path, target, replacement=t))
    for module, parts in sorted(pairs.items()):
        embedding = "embedding_A" in parts or "embedding_B" in parts
        a = parts.get("embedding_A" if embedding else "A")
        b = parts.get("embedding_B" if embedding else "B")
        if a is None or b is None:
            raise BadInput(f"adapter module {module}: lora_A and lora_B must both be present")
        path, target = _find_base(base_tensors, f"{module}.weight", module)
        transpose = embedding or spec.fan_in_fan_out
        out_in = (b.shape[0], a.shape[1]) if len(a.shape) == 2 and len(b.shape) == 2 else None
        if out_in is None or a.shape[0] != b.shape[1] or (out_in[::-1] if transpose else out_in) != target.shape:
            raise BadInput(
                f"adapter module {module}: B {list(b.shape)} · A {list(a.shape)} does not fit "
                f"{target.name} {list(target.shape)}"
            )
        ops.append(MergeOp(path, target, a=a, b=b, scale=spec.scale_for(module), transpose=transpose))
    return ops


def merged_weight(
    w: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    scale: float,
    transpose: bool = False,
    dtype: str = "F32",
) -> np.ndarray:
    """W + cast(scale · B·A) in W's storage dtype (`dtype`: F16, BF16, F32 or F64 bits in `w`)."""
    compute = np.float64 if dtype == "F64" else np.float32
    delta = (b.astype(compute, copy=False) @ a.astype(compute, copy=False)) * compute(scale)
    if transpose:
        delta = delta.T
    if dtype == "BF16":
        # numpy has no bfloat16: round the delta to bf16, add in float32, round again
        # (what torch's bf16 add does).
        delta32 = _bf16_to_f32(_f32_to_bf16(delta.astype(np.float32)))
        return _f32_to_bf16(_bf16_to_f32(w) + delta32)
    cast = delta.astype(w.dtype)
    return np.asarray(w + cast, dtype=w.dtype)


def decode_tensor(data: bytes | bytearray | memoryview, info: TensorInfo) -> np.ndarray:
    """A tensor's bytes as a float array for merging (BF16 → float32, others as stored)."""
    if info.dtype == "BF16":
        return _bf16_to_f32(np.frombuffer(data, dtype="<u2").reshape(info.shape))
    if info.dtype not in ("F16", "F32", "F64"):
        raise BadInput(f"tensor {info.name} has dtype {info.dtype}; only float weights can be merged")
    return np.frombuffer(data, dtype=numpy_dtype(info.dtype)).reshape(info.shape)


def encode_tensor(value: np.ndarray, info: TensorInfo) -> bytes:
    """An array back to `info`'s dtype and little-endian bytes."""
    if info.dtype == "BF16":
        bits = value if value.dtype == np.uint16 else _f32_to_bf16(np.asarray(value, dtype=np.float32))
        return np.ascontiguousarray(bits, dtype="<u2").tobytes()
    return np.ascontiguousarray(value, dtype=numpy_dtype(info.dtype)).tobytes()


def apply_merge(fd: int, ops: Sequence[MergeOp], read_adapter: Callable[[TensorInfo], bytes | bytearray]) -> None:
    """Rewrite the ops' tensors in the open base file `fd` (blocking), one tensor at a time."""
    for op in ops:
        if op.replacement is not None:
            value = decode_tensor(read_adapter(op.replacement), op.replacement)
            data = encode_tensor(value, op.target)
        else:
            assert op.a is not None and op.b is not None
            raw = os.pread(fd, op.target.size, op.target.start)
            if len(raw) != op.target.size:
                raise BadInput(f"base tensor {op.target.name} is cut short in {op.base_file}")
            if op.target.dtype == "BF16":
                w: np.ndarray = np.frombuffer(raw, dtype="<u2").reshape(op.target.shape)
            else:
                w = decode_tensor(raw, op.target)
            a = decode_tensor(read_adapter(op.a), op.a)
            b = decode_tensor(read_adapter(op.b), op.b)
            merged = merged_weight(w, a, b, scale=op.scale, transpose=op.transpose, dtype=op.target.dtype)
            data = encode_tensor(merged, op.target)
        if len(data) != op.target.size:
            raise BadInput(f"merged tensor {op.target.name} has {len(data)} bytes, expected {op.target.size}")
        view, offset = memoryview(data), op.target.start
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n


def _find_base(base: Mapping[str, tuple[str, TensorInfo]], key: str, what: str) -> tuple[str, TensorInfo]:
    if key in base:
        return base[key]
    # The adapter may name modules with or without the base model's own prefix (e.g. `bert.`).
    suffix = [k for k in base if k.endswith("." + key)]
    if len(suffix) == 1:
        return base[suffix[0]]
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        shorter = ".".join(parts[i:])
        if shorter in base:
            return base[shorter]
    raise BadInput(f"adapter tensor {what!r}: the base model has no weight {key!r}", tensor=what)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    # PEFT matches a pattern key against the end of the module's dotted name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(values: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)
