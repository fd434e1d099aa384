"""Safetensors headers as a device sees them: tensor names, dtypes, shapes and absolute byte ranges.

File layout (little-endian):

    [8 bytes: N][N bytes: JSON header][data region: each tensor's bytes at data_offsets]

The client reads headers from blocks it fetched and verified, but a published header is
still input: every offset, shape and dtype is checked before it is used to index a file.
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from cachenet.errors import BadInput, SafetensorsInvalid

__all__ = (
    "DTYPE_BYTES",
    "MAX_HEADER_BYTES",
    "TensorFileInfo",
    "TensorInfo",
    "header_length",
    "numpy_dtype",
    "parse_tensor_header",
)

MAX_HEADER_BYTES: Final = 100 * 1024 * 1024
Dtype = Literal[
    "BOOL",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "I64",
    "U64",
    "F64",
]
DTYPE_BYTES: Final[dict[str, int]] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_NUMPY: Final[dict[str, str]] = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "I64": "<i8",
    "U64": "<u8",
    "F64": "<f8",
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a safetensors file: dtype, shape and byte range [start, end) in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def size(self) -> int:
        """Bytes of the tensor's data."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class TensorFileInfo:
    """A parsed safetensors header: the tensors in file order and the free-form metadata."""

    path: str
    size: int
    data_start: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]

    def by_name(self) -> dict[str, TensorInfo]:
        """Tensor name → info."""
        return {t.name: t for t in self.tensors}


def header_length(prefix: bytes, *, path: str, file_size: int) -> int:
    """The JSON header's length from a file's first 8 bytes; raises `SafetensorsInvalid`."""
    if len(prefix) < 8 or file_size < 8:
        raise _bad(path, "shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise _bad(
            path,
            f"header length {n} is over the limit or past the end of the {file_size}-byte file",
        )
    return int(n)


def parse_tensor_header(prefix: bytes, *, path: str, file_size: int) -> TensorFileInfo:
    """Parse the first `8 + N` bytes of a safetensors file; raises `SafetensorsInvalid`."""
    n = header_length(prefix, path=path, file_size=file_size)
    if len(prefix) < 8 + n:
        raise _bad(path, "header was cut short")
    try:
        doc = json.loads(prefix[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"header is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _bad(path, "header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "__metadata__ must be an object")
    data_start = 8 + n
    data_len = file_size - data_start
    tensors = []
    for name, info in doc.items():
        tensors.append(_tensor(path, name, info, data_start, data_len))
    tensors.sort(key=lambda t: (t.start, t.end))
    position = data_start
    for t in tensors:
        if t.start < position:
            raise _bad(path, f"tensor {t.name!r} overlaps the tensor before it")
        position = t.end
    return TensorFileInfo(
        path, file_size, data_start, tuple(tensors), {str(k): str(v) for k, v in metadata.items()}
    )


def numpy_dtype(dtype: str) -> np.dtype[np.generic]:
    """The numpy dtype of a safetensors dtype; raises `BadInput` for BF16/F8 (ask for torch)."""
    code = _NUMPY.get(dtype)
    if code is None:
        raise BadInput(
            f"dtype {dtype} has no numpy equivalent; open the model with framework='pt' (torch)",
            dtype=dtype,
        )
    return np.dtype(code)


def _tensor(path: str, name: str, info: object, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(info, dict):
        raise _bad(path, f"tensor {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise _bad(path, f"tensor {name!r} data_offsets {offsets} lie outside the data region")
    if math.prod(shape) * DTYPE_BYTES[dtype] != end - begin:
        raise _bad(
            path, f"tensor {name!r}: shape {shape} of {dtype} does not fill {end - begin} bytes"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _bad(path: str, why: str) -> SafetensorsInvalid:
    return SafetensorsInvalid(f"{path}: not a valid safetensors file: {why}", path=path)
