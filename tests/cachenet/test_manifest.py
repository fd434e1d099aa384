"""Manifests: canonical JSON, content-derived revisions, strict validation, range mapping."""

import pytest

from cachenet.blockid import digest_of
from cachenet.errors import FileNotInModel, InvalidName, ManifestInvalid
from cachenet.manifest import BaseRef, BlockRef, FileManifest, ModelManifest

SHA = "a" * 64


def _ref(data: bytes) -> BlockRef:
    d = digest_of(data)
    return BlockRef(d.block_id, d.blake3, d.size)


def _model(name: str = "org/m", base: BaseRef | None = None) -> ModelManifest:
    f = FileManifest("model.safetensors", 6, SHA, (_ref(b"abc"), _ref(b"def")), "safetensors")
    g = FileManifest("sub/config.json", 2, SHA, (_ref(b"{}"),))
    return ModelManifest(name, (g, f), base, {"latency_s": 1.5})


def test_round_trip_is_canonical_and_revision_is_content_derived() -> None:
    m = _model()
    again = ModelManifest.from_bytes(m.to_bytes())
    assert again == m and again.revision == m.revision and len(m.revision) == 40
    assert [f.path for f in m.files] == ["model.safetensors", "sub/config.json"]
    assert _model(name="org/other").revision != m.revision


def test_tampered_manifest_is_refused() -> None:
    doc = _model().to_json()
    doc["files"][0]["size"] = 7
    with pytest.raises(ManifestInvalid):
        ModelManifest.from_json(doc)
    doc = _model().to_json()
    doc["metadata"] = {"latency_s": 9}
    with pytest.raises(ManifestInvalid, match="claims revision"):
        ModelManifest.from_json(doc)


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", "a\\b", "a//b", "./a", "", "a/\x00"])
def test_paths_that_escape_are_refused(path: str) -> None:
    doc = _model().to_json()
    doc["files"][0]["path"] = path
    doc.pop("revision")
    with pytest.raises((InvalidName, ManifestInvalid)):
        ModelManifest.from_json(doc)


@pytest.mark.parametrize("garbage", [b"not json", b"[]", b'{"format": "x"}', b'{"format": "cachenet.manifest/1"}'])
def test_garbage_is_a_manifest_error(garbage: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        ModelManifest.from_bytes(garbage)


def test_segments_cover_ranges_across_block_boundaries() -> None:
    f = _model().file("model.safetensors")
    assert [(lo, hi) for _, lo, hi in f.segments_in(0, 6)] == [(0, 3), (0, 3)]
    assert [(lo, hi) for _, lo, hi in f.segments_in(2, 4)] == [(2, 3), (0, 1)]
    assert [(lo, hi) for _, lo, hi in f.segments_in(3, 6)] == [(0, 3)]
    with pytest.raises(FileNotInModel):
        _model().file("nope")


def test_relayed_error_payload_with_a_status_code_rebuilds() -> None:
    """Regression: an error relayed by an edge node carried status_code twice and raised TypeError."""
    from cachenet.errors import ModelNotFound, error_from_payload

    err = error_from_payload(404, {"error": "ModelNotFound", "message": "no", "status_code": 404, "model": "m"})
    assert isinstance(err, ModelNotFound) and err.attrs["model"] == "m"


def test_numbers_json_cannot_write_are_refused_even_with_an_upstream_commit() -> None:
    # Python's json writes inf as "Infinity", which no other JSON parser reads.
    with pytest.raises(ManifestInvalid, match="NaN or infinity"):
        ModelManifest("org/m", (), None, {"x": float("inf"), "upstream_commit": "0" * 40})
    body = b'{"format":"cachenet.manifest/1","name":"org/m","files":[],"metadata":{"x":Infinity}}'
    with pytest.raises(ManifestInvalid, match="not JSON"):
        ModelManifest.from_bytes(body)


def test_malformed_documents_name_the_field() -> None:
    doc = _model().to_json()
    doc["files"][0]["blocks"][0][2] = 0
    with pytest.raises(ManifestInvalid, match=r"\$\.files\[0\]\.blocks\[0\]"):
        ModelManifest.from_json(doc)
    with pytest.raises(ManifestInvalid, match="format"):
        ModelManifest.from_json({**_model().to_json(), "format": "other/1"})
