"""Assembling files from the local store: atomic, byte-identical, refused when hashes differ."""

import hashlib
from pathlib import Path

import pytest

from cachenet.blockid import digest_of
from cachenet.blockstore import BlockStore
from cachenet.errors import IntegrityError
from cachenet.manifest import BlockRef, FileManifest
from clients.assemble import assemble_file
from clients.localstore import HOME_ENV, default_home, open_local_store, read_file_range


def _stored_file(store: BlockStore, parts: list[bytes], path: str = "a/b.bin") -> FileManifest:
    refs = []
    for part in parts:
        d = digest_of(part)
        store.put(d.block_id, part, blake3=d.blake3)
        refs.append(BlockRef(d.block_id, d.blake3, d.size))
    data = b"".join(parts)
    return FileManifest(path, len(data), hashlib.sha256(data).hexdigest(), tuple(refs))


def test_a_file_is_assembled_byte_identical_and_ranges_read_across_blocks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store", fsync=False)
    parts = [b"x" * 10, b"hello world", b"\0" * 5_000_000, b"tail"]
    f = _stored_file(store, parts)
    assemble_file(store, f, tmp_path / "out" / f.path)
    assert (tmp_path / "out" / f.path).read_bytes() == b"".join(parts)
    assert bytes(read_file_range(store, f, 5, 25)) == b"".join(parts)[5:25]
    assert list((tmp_path / "out" / "a").iterdir()) == [tmp_path / "out" / "a" / "b.bin"]


def test_a_wrong_sha256_leaves_no_file_behind(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "store", fsync=False)
    f = _stored_file(store, [b"abc", b"def"])
    wrong = FileManifest(f.path, f.size, "0" * 64, f.blocks)
    target = tmp_path / "out" / "b.bin"
    target.parent.mkdir()
    target.write_bytes(b"previous version")
    with pytest.raises(IntegrityError):
        assemble_file(store, wrong, target)
    assert target.read_bytes() == b"previous version"  # untouched, and no temp file left
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_default_home_honours_cachenet_home_then_xdg(tmp_path: Path) -> None:
    assert default_home({HOME_ENV: str(tmp_path / "h")}) == tmp_path / "h"
    assert default_home({"XDG_CACHE_HOME": str(tmp_path / "x")}) == tmp_path / "x" / "cachenet"
    assert default_home({}).name == "cachenet"
    store = open_local_store(None, env={HOME_ENV: str(tmp_path / "h")}, fsync=False)
    assert store.root == tmp_path / "h" and (tmp_path / "h" / "blocks").is_dir()
