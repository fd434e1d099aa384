"""Safetensors header parsing on the device: agrees with safetensors, refuses malformed headers."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from cachenet.errors import BadInput, SafetensorsInvalid
from clients.tensorfile import numpy_dtype, parse_tensor_header
from tests.modelgen import MALFORMED_SAFETENSORS, real_model_dir

# Cases the client must refuse: it reads bytes at these offsets. (Gaps and trailing bytes
# are harmless to a reader; the origin refuses them at publish.)
REFUSED = sorted(set(MALFORMED_SAFETENSORS) - {"gap before a tensor", "trailing bytes"})


def test_header_of_the_real_model_matches_safetensors() -> None:
    path = real_model_dir() / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    info = parse_tensor_header(data[: 8 + n], path="model.safetensors", file_size=len(data))
    with safe_open(str(path), framework="np") as f:
        assert {t.name for t in info.tensors} == set(f.keys())
        for t in info.tensors:
            value = f.get_tensor(t.name)
            assert t.shape == value.shape
            assert np.frombuffer(data[t.start : t.end], dtype=numpy_dtype(t.dtype)).reshape(t.shape).tobytes() == (
                value.tobytes()
            )


@pytest.mark.parametrize("case", REFUSED)
def test_malformed_headers_are_refused(case: str) -> None:
    header, body, length = MALFORMED_SAFETENSORS[case]
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    data = n.to_bytes(8, "little") + raw + body
    with pytest.raises(SafetensorsInvalid):
        parse_tensor_header(data, path="x.safetensors", file_size=len(data))


def test_bf16_has_no_numpy_dtype() -> None:
    with pytest.raises(BadInput, match="framework='pt'"):
        numpy_dtype("BF16")
    assert numpy_dtype("F16") == np.float16
