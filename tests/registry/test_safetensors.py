"""Strict safetensors parsing and tensor-aligned chunking."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cachenet.errors import SafetensorsInvalid
from cachenet.safetensors import parse_header
from registry.chunking import chunk_buffer, cut_file, plan_segments
from tests.modelgen import MALFORMED_SAFETENSORS, write_safetensors


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "ok.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32), "b": np.zeros((2, 3), dtype=np.int64)}, str(path))
    return path


def test_valid_file_parses(tmp_path: Path) -> None:
    data = _valid(tmp_path).read_bytes()
    header = parse_header(data, file_size=len(data))
    assert sorted(t.name for t in header.tensors) == ["a", "b"]
    assert header.tensors[-1].end == len(data)


@pytest.mark.parametrize("case", sorted(MALFORMED_SAFETENSORS))
def test_malformed_headers_are_rejected_with_the_file_named(tmp_path: Path, case: str) -> None:
    header, data, length = MALFORMED_SAFETENSORS[case]
    path = write_safetensors(tmp_path / "bad.safetensors", header, data, length=length)
    raw = path.read_bytes()
    with pytest.raises(SafetensorsInvalid, match="bad.safetensors"):
        plan_segments(raw, kind="safetensors", name="bad.safetensors", max_block_size=1 << 20)


def test_one_block_per_tensor_and_slices_above_the_maximum(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"big": np.arange(1000, dtype=np.float32), "small": np.ones(3, dtype=np.float32)}, str(path))
    raw = path.read_bytes()
    header = parse_header(raw, file_size=len(raw))
    segments = plan_segments(raw, kind="safetensors", name="m", max_block_size=1024)
    # header block (< 1024 bytes), 4000 bytes of "big" in 4 slices, then "small"
    assert segments[0] == (0, header.data_start)
    assert [e - s for s, e in segments[1:]] == [1024, 1024, 1024, 928, 12]
    manifest, offsets = chunk_buffer(raw, path="m.safetensors", max_block_size=1024)
    assert offsets == tuple(s for s, _ in segments)
    assert b"".join(raw[o : o + r.size] for o, r in zip(offsets, manifest.blocks, strict=True)) == raw


def test_identical_tensors_are_one_block_whatever_the_file(tmp_path: Path) -> None:
    shared = np.arange(256, dtype=np.float32)
    save_file({"x": shared, "y": np.zeros(4, dtype=np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"w": np.ones(9, dtype=np.float32), "x": shared}, str(tmp_path / "b.safetensors"))
    a = cut_file(tmp_path / "a.safetensors", "a.safetensors")
    b = cut_file(tmp_path / "b.safetensors", "b.safetensors")
    common = {r.block_id for r in a.manifest.blocks} & {r.block_id for r in b.manifest.blocks}
    assert len(common) == 1


def test_raw_files_are_sliced(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"k": "v" * 5000}))
    cut = cut_file(tmp_path / "c.json", "c.json", max_block_size=2048)
    assert cut.manifest.kind == "raw" and len(cut.manifest.blocks) == 3
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert cut_file(empty, "empty.txt").manifest.blocks == ()
