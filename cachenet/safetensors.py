"""Strict parsing of safetensors headers: every offset, shape and dtype checked before use.

File layout (little-endian):

    [8 bytes: N = header length][N bytes: JSON header][data region]

    header = {"__metadata__": {str: str}?, "<tensor>": {"dtype": D, "shape": [..], "data_offsets": [b, e]}}

Offsets are relative to the data region. The tensors must tile the data region exactly
(no overlap, no gap, nothing past its end) and each tensor's byte length must equal
prod(shape) × itemsize(dtype).
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Final

from cachenet.errors import SafetensorsInvalid

__all__ = ("DTYPE_BITS", "MAX_HEADER_BYTES", "SafetensorsHeader", "TensorInfo", "parse_header")

MAX_HEADER_BYTES: Final = 100 * 1024 * 1024
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor: name, dtype, shape and its byte range in the file (absolute offsets)."""

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
class SafetensorsHeader:
    """A parsed header: where the data region starts and the tensors in file order."""

    header_bytes: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        """Absolute offset of the data region (8 + header length)."""
        return 8 + self.header_bytes


def parse_header(prefix: bytes | memoryview, *, file_size: int, name: str = "<file>") -> SafetensorsHeader:
    """Parse and validate a safetensors header from the file's first bytes.

    `prefix` must hold at least the 8-byte length and the JSON header. Raises
    `SafetensorsInvalid` naming the file and the first problem found.
    """

    def bad(why: str) -> SafetensorsInvalid:
        return SafetensorsInvalid(f"{name}: not a valid safetensors file: {why}", path=name)

    if file_size < 8 or len(prefix) < 8:
        raise bad("shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(prefix[:8]))
    if n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the {file_size}-byte file")
    if len(prefix) < 8 + n:
        raise bad("header was cut short")
    raw = bytes(prefix[8 : 8 + n])
    try:
        doc = json.loads(raw)
    # ValueError also covers integers over Python's digit limit; RecursionError deep nesting.
    except (ValueError, RecursionError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise bad("header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")
    data_start, data_len = 8 + n, file_size - 8 - n
    tensors = []
    for tname, info in doc.items():
        if not isinstance(info, dict):
            raise bad(f"tensor {tname!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise bad(f"tensor {tname!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"tensor {tname!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise bad(f"tensor {tname!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(f"tensor {tname!r} data_offsets {offsets} are outside the {data_len}-byte data region")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise bad(
                f"tensor {tname!r}: shape {shape} of {dtype} needs {bits / 8:g} bytes, data_offsets give {end - begin}"
            )
        tensors.append(TensorInfo(tname, dtype, tuple(shape), data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    position = data_start
    for t in tensors:
        if t.start < position:
            raise bad(f"tensor {t.name!r} overlaps the tensor before it")
        if t.start > position:
            raise bad(f"gap of {t.start - position} bytes before tensor {t.name!r}")
        position = t.end
    if position != file_size:
        raise bad(f"{file_size - position} bytes after the last tensor are not described by the header")
    return SafetensorsHeader(n, tuple(tensors), metadata)
