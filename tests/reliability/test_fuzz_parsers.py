"""Property-based fuzzing of every parser that reads hostile input (issue #9, part 4).

Each target gets random input and mutations of valid input. The property is always the
same: the parser returns a value that satisfies its documented invariants, or raises a
`CachenetError` subclass; nothing else escapes. Valid inputs round-trip.

The number of inputs each target tried is written to `<pytest basetemp>/fuzz_counts.json`
at the end of the module (the README quotes it).
"""

import copy
import json
import math
import os
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cachenet.blockid import validate_blake3, validate_block_id
from cachenet.edge.routes import parse_plan
from cachenet.errors import (
    CachenetError,
    InvalidName,
    ManifestInvalid,
    RangeNotSatisfiable,
    SafetensorsInvalid,
)
from cachenet.manifest import (
    MANIFEST_FORMAT,
    BaseRef,
    BlockRef,
    FileKind,
    FileManifest,
    ModelManifest,
)
from cachenet.names import (
    parse_model_ref,
    validate_file_path,
    validate_model_name,
    validate_revision,
)
from cachenet.ranges import parse_range
from cachenet.safetensors import DTYPE_BITS, SafetensorsHeader, parse_header
from placement.errors import TopologyInvalid
from placement.topology import Topology, parse_topology, topology_to_dict
from registry.chunking import StreamCutter, chunk_buffer, plan_segments

COUNTS: Final[Counter[str]] = Counter()
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(FUZZ, max_examples=150)
DEEP_JSON: Final = b"[" * 100_000 + b"]" * 100_000
HUGE_INT_JSON: Final = b"1" * 5000


@pytest.fixture(scope="module", autouse=True)
def _write_counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    out = tmp_path_factory.getbasetemp() / "fuzz_counts.json"
    out.write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1))


# -- strategies ---------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
name_part = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,10}\Z")
model_names = st.builds(lambda a, b: f"{a}/{b}" if b else a, name_part, st.none() | name_part)
file_paths = st.lists(name_part, min_size=1, max_size=3).map("/".join)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutations(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A JSON-like tree with 1-3 random edits: replace a node, delete it, nudge a number."""
    doc = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "delete", "nudge"]))
        if not path:
            doc = draw(json_values) if op == "replace" else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        value = parent[key]
        if op == "delete":
            del parent[key]
        elif op == "nudge" and isinstance(value, int) and not isinstance(value, bool):
            parent[key] = value + draw(st.sampled_from([-1, 1, -(2**64), 2**64, 2**63 - value]))
        else:
            parent[key] = draw(json_values)
    return doc


# -- safetensors --------------------------------------------------------------------------


@st.composite
def safetensors_parts(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A valid header (as a dict) and its data region."""
    names = draw(
        st.lists(
            st.text(min_size=1, max_size=10).filter(lambda s: s != "__metadata__"),
            max_size=5,
            unique=True,
        )
    )
    header: dict[str, Any] = {}
    data = bytearray()
    for tname in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        nbytes = math.prod(shape) * DTYPE_BITS[dtype] // 8
        begin = len(data)
        data += draw(st.binary(min_size=nbytes, max_size=nbytes))
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, len(data)]}
    order = draw(st.permutations(list(header)))
    header = {k: header[k] for k in order}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
    return header, bytes(data)


def _file(header: Any, data: bytes, *, pad: int = 0) -> bytes:
    raw = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(raw)) + raw + data


@st.composite
def mutated_safetensors(draw: st.DrawFn) -> bytes:
    """A valid file with one hostile change: header dict, length field, truncation, byte flips."""
    header, data = draw(safetensors_parts())
    how = draw(st.sampled_from(["dict", "dict", "length", "truncate", "extend", "flip"]))
    if how == "dict":
        return _file(draw(mutations(st.just(header))), data)
    blob = bytearray(_file(header, data))
    if how == "length":
        n = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(blob) + 8))
        blob[:8] = struct.pack("<Q", n)
    elif how == "truncate":
        del blob[draw(st.integers(0, len(blob))) :]
    elif how == "extend":
        blob += draw(st.binary(min_size=1, max_size=16))
    else:
        for _ in range(draw(st.integers(1, 4))):
            if blob:
                blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob)


def _check_header(h: SafetensorsHeader, file_size: int) -> None:
    position = h.data_start
    for t in h.tensors:
        assert t.start == position, "tensors must tile the data region"
        assert t.size * 8 == math.prod(t.shape) * DTYPE_BITS[t.dtype]
        position = t.end
    assert position == file_size
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in h.metadata.items())


def _parse_or_error(blob: bytes, file_size: int) -> SafetensorsHeader | None:
    try:
        h = parse_header(blob, file_size=file_size, name="fuzz.safetensors")
    except SafetensorsInvalid as e:
        assert "fuzz.safetensors" in str(e)
        return None
    _check_header(h, file_size)
    return h


@FUZZ
@given(st.binary(max_size=256), st.integers(-8, 64))
@example(struct.pack("<Q", len(DEEP_JSON)) + DEEP_JSON, 0)
@example(struct.pack("<Q", len(HUGE_INT_JSON)) + HUGE_INT_JSON, 0)
@example(_file({"t": {"dtype": ["F32"], "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4), 0)
@example(_file({"t": {"dtype": {}, "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4), 0)
def test_fuzz_safetensors_header_random_bytes(blob: bytes, extra: int) -> None:
    COUNTS["safetensors.parse_header (random bytes)"] += 1
    _parse_or_error(blob, max(0, len(blob) + extra))


@FUZZ
@given(safetensors_parts(), st.integers(0, 7))
def test_fuzz_safetensors_header_valid_round_trips(parts: tuple[dict[str, Any], bytes], pad: int) -> None:
    COUNTS["safetensors.parse_header (valid)"] += 1
    header, data = parts
    blob = _file(header, data, pad=pad)
    h = parse_header(blob, file_size=len(blob), name="ok.safetensors")
    _check_header(h, len(blob))
    described = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {t.name: (t.dtype, list(t.shape), [t.start - h.data_start, t.end - h.data_start]) for t in h.tensors} == {
        k: (v["dtype"], v["shape"], v["data_offsets"]) for k, v in described.items()
    }
    assert h.metadata == header.get("__metadata__", {})


@FUZZ
@given(mutated_safetensors())
def test_fuzz_safetensors_header_mutated(blob: bytes) -> None:
    COUNTS["safetensors.parse_header (mutated)"] += 1
    _parse_or_error(blob, len(blob))


def _check_segments(segments: list[tuple[int, int]], size: int, max_block: int) -> None:
    position = 0
    for start, end in segments:
        assert start == position and 0 < end - start <= max_block
        position = end
    assert position == size


files_to_cut = (
    st.builds(lambda p, pad: _file(*p, pad=pad), safetensors_parts(), st.integers(0, 7))
    | mutated_safetensors()
    | st.binary(max_size=128)
)


@FUZZ
@given(files_to_cut, st.integers(1, 40), st.sampled_from(["model.safetensors", "config.json"]))
def test_fuzz_plan_segments(blob: bytes, max_block: int, path: str) -> None:
    COUNTS["chunking.plan_segments"] += 1
    kind: FileKind = "safetensors" if path.endswith(".safetensors") else "raw"
    try:
        segments = plan_segments(blob, kind=kind, name=path, max_block_size=max_block)
    except CachenetError:
        assert kind == "safetensors"
        return
    _check_segments(segments, len(blob), max_block)


@FUZZ
@given(
    files_to_cut,
    st.integers(1, 40),
    st.lists(st.integers(0, 50), max_size=40),
    st.sampled_from(["model.safetensors", "weights/x.safetensors", "config.json"]),
)
def test_fuzz_stream_cutter_matches_chunk_buffer(blob: bytes, max_block: int, pieces: list[int], path: str) -> None:
    COUNTS["chunking.StreamCutter (random piece sizes)"] += 1
    try:
        expected: tuple[FileManifest, tuple[int, ...]] | None = chunk_buffer(blob, path=path, max_block_size=max_block)
    except CachenetError:
        expected = None
    cutter = StreamCutter(path=path, size=len(blob), max_block_size=max_block)
    got: list[tuple[BlockRef, bytes]] = []
    try:
        position = 0
        for n in [*pieces, len(blob)]:
            piece = blob[position : position + n]
            position += len(piece)
            got += cutter.feed(piece)
        manifest = cutter.finish()
    except CachenetError:
        assert expected is None, "StreamCutter refused a file chunk_buffer accepts"
        return
    assert expected is not None, "StreamCutter accepted a file chunk_buffer refuses"
    assert manifest == expected[0]
    assert b"".join(block for _, block in got) == blob
    assert [ref for ref, _ in got] == list(manifest.blocks)


def test_stream_cutter_refuses_more_bytes_than_announced() -> None:
    cutter = StreamCutter(path="a.bin", size=3)
    with pytest.raises(CachenetError):
        cutter.feed(b"abcd")


# -- manifests ----------------------------------------------------------------------------


@st.composite
def manifests(draw: st.DrawFn) -> ModelManifest:
    files = []
    for path in draw(st.lists(file_paths, max_size=3, unique=True)):
        sizes = draw(st.lists(st.integers(1, 2**40), max_size=4))
        refs = tuple(BlockRef(draw(hex32), draw(hex64), n) for n in sizes)
        files.append(FileManifest(path, sum(sizes), draw(hex64), refs, draw(st.sampled_from(["raw", "safetensors"]))))
    base = draw(st.none() | st.builds(BaseRef, model_names, st.text("0123456789abcdef", min_size=40, max_size=40)))
    metadata = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        metadata["upstream_commit"] = draw(st.text("0123456789abcdef", min_size=40, max_size=40))
    return ModelManifest(draw(model_names), tuple(files), base, metadata)


def _check_manifest(m: ModelManifest) -> None:
    again = ModelManifest.from_bytes(m.to_bytes())
    assert again == m and again.to_bytes() == m.to_bytes()


@FUZZ
@given(manifests())
def test_fuzz_manifest_valid_round_trips(m: ModelManifest) -> None:
    COUNTS["manifest (valid round trip)"] += 1
    _check_manifest(m)
    assert ModelManifest.from_json(json.loads(m.to_bytes())) == m


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@example(DEEP_JSON)
@example(HUGE_INT_JSON)
def test_fuzz_manifest_random_input(data: bytes) -> None:
    COUNTS["manifest (random bytes / JSON)"] += 1
    try:
        m = ModelManifest.from_bytes(data)
    except CachenetError:
        return
    _check_manifest(m)


@FUZZ
@given(mutations(manifests().map(lambda m: m.to_json())))
@example({"format": MANIFEST_FORMAT, "name": "a/b", "files": [], "metadata": {"x": "\ud800"}})
@example(
    {
        "format": MANIFEST_FORMAT,
        "name": "a/b",
        "files": [],
        "base": {"name": "a/c", "revision": int("1" * 40)},
    }
)
@example(
    {
        "format": MANIFEST_FORMAT,
        "name": "a/b",
        "files": [],
        "base": {"name": "a/c", "revision": "a" * 40 + "\n"},
    }
)
@example(
    {
        "format": MANIFEST_FORMAT,
        "name": "a/b",
        "files": [{"path": "x\udc80", "size": 0, "sha256": "0" * 64, "blocks": []}],
    }
)
def test_fuzz_manifest_mutated(doc: Any) -> None:
    COUNTS["manifest (mutated)"] += 1
    try:
        m = ModelManifest.from_json(doc)
    except CachenetError:
        return
    _check_manifest(m)


# -- edge plans ---------------------------------------------------------------------------

valid_plans = st.fixed_dictionaries(
    {"blocks": st.lists(st.tuples(hex32, hex64, st.integers(1, 2**40)).map(list), max_size=4)},
    optional={"plan_id": st.text(max_size=80)},
)


@FUZZ
@given(
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutations(valid_plans).map(lambda v: json.dumps(v).encode())
)
@example(DEEP_JSON)
@example(HUGE_INT_JSON)
@example(b'{"blocks": [{"a": 1, "b": 2, "c": 3}]}')
def test_fuzz_edge_plan_random_input(raw: bytes) -> None:
    COUNTS["edge plan (random / mutated)"] += 1
    try:
        plan_id, refs = parse_plan(raw)
    except CachenetError:
        return
    assert isinstance(plan_id, str) and len(plan_id) <= 64
    for ref in refs:
        validate_block_id(ref.block_id)
        validate_blake3(ref.blake3)
        assert isinstance(ref.size, int) and ref.size > 0


@FUZZ_SMALL
@given(valid_plans)
def test_fuzz_edge_plan_valid_round_trips(plan: dict[str, Any]) -> None:
    COUNTS["edge plan (valid)"] += 1
    plan_id, refs = parse_plan(json.dumps(plan).encode())
    assert [[r.block_id, r.blake3, r.size] for r in refs] == plan["blocks"]
    assert plan_id == (str(plan.get("plan_id") or "manual"))[:64]


# -- topologies ---------------------------------------------------------------------------

ids = st.from_regex(r"\A[a-z][a-z0-9-]{0,6}\Z")
positions = st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=2)


@st.composite
def topology_dicts(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    n_servers = draw(st.integers(1, len(names)))
    server_ids, node_ids = names[:n_servers], names[n_servers:]
    servers = []
    for sid in server_ids:
        s: dict[str, Any] = {
            "id": sid,
            "position": draw(positions),
            "capacity": draw(st.integers(0, 2**40) | st.sampled_from(["4GB", "512MiB", "1e9"])),
        }
        if draw(st.booleans()):
            s["radio"] = {"bandwidth_hz": draw(st.floats(1, 1e9)), "rayleigh": draw(st.booleans())}
        if draw(st.booleans()):
            s["port"] = draw(st.integers(1, 65535))
        servers.append(s)
    links = [
        {"a": a, "b": b, "rate_bps": draw(st.floats(1, 1e12))}
        for a, b in draw(
            st.lists(
                st.tuples(st.sampled_from(names), st.sampled_from(names)).filter(lambda p: p[0] != p[1]),
                max_size=5,
            )
        )
    ]
    users = [
        {
            "id": f"u{i}",
            "position": draw(positions),
            "server": draw(st.none() | st.sampled_from(server_ids)),
        }
        for i in range(draw(st.integers(0, 4)))
    ]
    doc: dict[str, Any] = {
        "name": draw(st.text(max_size=8)),
        "servers": servers,
        "nodes": node_ids,
        "backhaul": links,
        "users": [{k: v for k, v in u.items() if v is not None} for u in users],
    }
    if draw(st.booleans()):
        doc["origin"] = draw(st.sampled_from(names))
    return doc


def _check_topology(t: Topology) -> None:
    assert parse_topology(topology_to_dict(t)) == t


@FUZZ_SMALL
@given(topology_dicts())
def test_fuzz_topology_valid_round_trips(doc: dict[str, Any]) -> None:
    COUNTS["topology (valid round trip)"] += 1
    _check_topology(parse_topology(doc))


topology_keys = st.sampled_from(
    [
        "name",
        "servers",
        "nodes",
        "backhaul",
        "users",
        "cells",
        "origin",
        "radio",
        "overhead_s",
        "latency_requirement_s",
    ]
)


@FUZZ
@given(
    json_values
    | st.dictionaries(topology_keys | st.integers() | st.text(max_size=4), json_values, max_size=6)
    | mutations(topology_dicts())
)
@example({"servers": [{"id": "a", "position": [0, 0], "capacity": "1e999"}]})
@example({"servers": [{"id": "a", "position": [0, 0], "capacity": 1}], "origin": []})
@example({"servers": [{"id": "a", "position": [10**400, 0], "capacity": 1}]})
@example({"servers": [{"id": "a", "position": [0, 0], "capacity": 1, "radio": {1: 2, "x": 3}}]})
def test_fuzz_topology_random_input(doc: Any) -> None:
    COUNTS["topology (random / mutated)"] += 1
    try:
        t = parse_topology(doc)
    except TopologyInvalid:
        return
    _check_topology(t)


# -- Range headers ------------------------------------------------------------------------

range_headers = (
    st.none()
    | st.text(max_size=30)
    | st.from_regex(r"\Abytes=[0-9]{0,21}-[0-9]{0,21}\Z")
    | st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 2**66), st.integers(0, 2**66))
    | st.builds(lambda a: f"bytes=-{a}", st.integers(0, 2**66))
)


@FUZZ
@given(range_headers, st.integers(0, 2**64))
@example("bytes=-5", 0)
@example("bytes=0-", 0)
def test_fuzz_range_header(header: str | None, size: int) -> None:
    COUNTS["ranges.parse_range"] += 1
    try:
        rng = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if rng is not None:
        start, end = rng
        assert 0 <= start < end <= size, (header, size, rng)


@FUZZ_SMALL
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 2**40))
def test_fuzz_range_valid_round_trips(a: int, b: int, size: int) -> None:
    COUNTS["ranges.parse_range (valid)"] += 1
    first, last = min(a, b) % size, max(a, b)
    assert parse_range(f"bytes={first}-{last}", size) == (first, min(size, last + 1))


# -- names and paths ----------------------------------------------------------------------

hostile_text = (
    st.text(max_size=40)
    | st.sampled_from(
        [
            "..",
            "../x",
            "a/../../etc/passwd",
            "/etc/passwd",
            "a\\..\\b",
            "C:x",
            "a//b",
            "./a",
            "a/.",
            "a\x00b",
            "config.json\n",
            "model\n",
            "org/model\n",
            "main\n",
            "a" * 2000,
            "\udc80",
            "a/\ud800",
        ]
    )
    | st.lists(st.sampled_from(["a", "..", ".", "", "b.bin", "\n", " ", "\\"]), max_size=5).map("/".join)
)
_FORBIDDEN_PATH_CHARS: Final = set('\\:*?"<>|') | {chr(c) for c in range(32)}


@FUZZ
@given(hostile_text)
def test_fuzz_file_paths_never_leave_the_folder(path: str) -> None:
    COUNTS["names.validate_file_path"] += 1
    try:
        ok = validate_file_path(path)
    except InvalidName:
        return
    parts = PurePosixPath(ok).parts
    assert ok == path and not ok.startswith("/") and ".." not in parts and "." not in ok.split("/")
    assert not (_FORBIDDEN_PATH_CHARS & set(ok)), repr(ok)
    assert os.path.normpath(os.path.join("/data/root", ok)).startswith("/data/root/")
    ok.encode("utf-8")  # a path that cannot be written as UTF-8 cannot be a file name on the wire


@FUZZ
@given(hostile_text | model_names)
def test_fuzz_model_names_and_revisions(text: str) -> None:
    COUNTS["names.validate_model_name / validate_revision / parse_model_ref"] += 1
    for validate in (validate_model_name, validate_revision):
        try:
            ok = validate(text)
        except InvalidName:
            continue
        assert ok == text and ".." not in ok and "\n" not in ok and "\\" not in ok
        assert all(c.isascii() and (c.isalnum() or c in "._-/") for c in ok), repr(ok)
    try:
        name, rev = parse_model_ref(text)
    except InvalidName:
        return
    assert validate_model_name(name) == name and validate_revision(rev) == rev


@FUZZ
@given(hostile_text | hex32 | hex64)
def test_fuzz_block_ids(text: str) -> None:
    COUNTS["blockid.validate_block_id / validate_blake3"] += 1
    for validate, n in ((validate_block_id, 32), (validate_blake3, 64)):
        try:
            ok = validate(text)
        except InvalidName:
            continue
        assert ok == text and len(ok) == n, repr(ok)


# Regression: BLOCK_ID_RE/BLAKE3_RE were anchored with '$', which also matches before a
# trailing newline.
@pytest.mark.parametrize("text", ["0" * 32 + "\n", "0" * 64 + "\n"])
def test_block_ids_with_a_trailing_newline_are_refused(text: str) -> None:
    validate = validate_block_id if len(text) == 33 else validate_blake3
    try:
        validate(text)
    except InvalidName:
        return
    raise AssertionError(f"{validate.__name__} accepted {text!r}")


def test_manifest_invalid_is_a_cachenet_error() -> None:
    # The fuzz targets above rely on every refusal being a CachenetError.
    assert issubclass(ManifestInvalid, CachenetError) and issubclass(TopologyInvalid, CachenetError)
