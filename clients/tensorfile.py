"""Safetensors headers as a device sees them: tensor names, dtypes, shapes and absolute byte ranges.

File layout (little-endian):

    [8 bytes: N][N bytes: JSON header][data region: each tensor's bytes at data_offsets]

The client reads headers from blocks it fetched and verified, but a published header is
still input: every offset, shape and dtype is checked before it is used to index a file.
"""

import struct
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from cachenet.errors import BadInput, SafetensorsInvalid
from cachenet.safetensors import TensorInfo, parse_header

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
    """Parse the first `8 + N` bytes of a safetensors file; raises `SafetensorsInvalid`.

    The checks are the publisher's own (`cachenet.safetensors.parse_header`): a header that
    reached a device is still input, and it must hold to the same rules.
    """
    header_length(prefix, path=path, file_size=file_size)
    header = parse_header(prefix, file_size=file_size, name=path)
    return TensorFileInfo(path, file_size, header.data_start, header.tensors, dict(header.metadata))


def numpy_dtype(dtype: str) -> np.dtype[np.generic]:
    """The numpy dtype of a safetensors dtype; raises `BadInput` for BF16/F8 (ask for torch)."""
    code = _NUMPY.get(dtype)
    if code is None:
        raise BadInput(
            f"dtype {dtype} has no numpy equivalent; open the model with framework='pt' (torch)",
            dtype=dtype,
        )
    return np.dtype(code)


def _bad(path: str, why: str) -> SafetensorsInvalid:
    return SafetensorsInvalid(f"{path}: not a valid safetensors file: {why}", path=path)
