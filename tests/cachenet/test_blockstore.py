"""The on-disk block store: verified atomic writes, accounting, capacity, concurrency, health check."""

import os
import threading
from pathlib import Path

import pytest

from cachenet.blockid import digest_of
from cachenet.blockstore import BlockStore
from cachenet.errors import BlockCorrupt, BlockNotFound, CapacityExceeded, InvalidName


def _block(n: int, size: int = 1000) -> tuple[str, str, bytes]:
    data = (n.to_bytes(4, "little") * (size // 4 + 1))[:size]
    d = digest_of(data)
    return d.block_id, d.blake3, data


def test_put_read_and_accounting(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(1)
    assert store.put(block_id, data, blake3=b3) is True
    assert store.put(block_id, data, blake3=b3) is False
    assert store.read(block_id) == data
    assert store.used_bytes == len(data) and len(store) == 1
    path = store.path(block_id)
    assert path.parent.name == block_id[2:4] and path.parent.parent.name == block_id[:2]
    assert store.delete(block_id) == len(data)
    assert store.used_bytes == 0
    with pytest.raises(BlockNotFound):
        store.read(block_id)
    assert store.check().ok


def test_wrong_bytes_are_refused_and_nothing_is_left(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(2)
    with pytest.raises(BlockCorrupt):
        store.put(block_id, data + b"x")
    other_id, other_b3, _ = _block(3)
    with pytest.raises(BlockCorrupt):
        store.put(block_id, data, blake3=other_b3)
    assert not store.has(block_id) and store.used_bytes == 0
    assert not list(tmp_path.rglob("*.tmp"))
    assert store.check().ok


def test_invalid_ids_never_reach_the_filesystem(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    for bad in ("../../etc/passwd", "ABCDEF" * 6, "0" * 31, "0" * 32 + "/x", ""):
        with pytest.raises(InvalidName):
            store.put(bad, b"x")
        with pytest.raises(InvalidName):
            store.path(bad)


def test_capacity_is_never_exceeded(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, capacity_bytes=2500, fsync=False)
    for n in range(2):
        block_id, b3, data = _block(n)
        store.put(block_id, data, blake3=b3)
    block_id, b3, data = _block(9)
    with pytest.raises(CapacityExceeded):
        store.put(block_id, data, blake3=b3)
    assert store.used_bytes == 2000 and not store.has(block_id)
    assert store.check().ok


def test_concurrent_writers_of_the_same_block(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(7, size=1 << 20)
    results: list[bool] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            results.append(store.put(block_id, data, blake3=b3))
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results.count(True) == 1
    assert store.used_bytes == len(data)
    assert store.read(block_id) == data
    assert store.check().ok


def test_streamed_writer_aborts_cleanly(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(5, size=10_000)
    with store.writer(block_id, blake3=b3, expected_size=len(data)) as w:
        w.write(data[:5000])
        # leaving without commit: the partial block must vanish
    assert not store.has(block_id) and not list(tmp_path.rglob("*.tmp"))
    assert store.free_bytes is None
    with store.writer(block_id, blake3=b3, expected_size=len(data)) as w:
        w.write(data[:5000])
        w.write(data[5000:])
        assert w.commit() is True
    assert store.read(block_id) == data


def test_restart_reindexes_and_removes_crash_leftovers(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(4)
    store.put(block_id, data, blake3=b3)
    leftover = store.path(block_id).parent / f".{block_id}.deadbeef.tmp"
    leftover.write_bytes(b"partial")
    store.close()  # as when the process that crashed is gone
    reopened = BlockStore(tmp_path, fsync=False)
    assert reopened.has(block_id) and reopened.used_bytes == len(data)
    assert not leftover.exists()


def test_a_second_store_on_the_folder_leaves_fresh_temp_files_of_the_first_alone(tmp_path: Path) -> None:
    """Regression: opening a store deleted the temp files other processes were still writing."""
    first = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(8)
    with first.writer(block_id, blake3=b3, expected_size=len(data)) as w:
        w.write(data[:10])
        BlockStore(tmp_path, fsync=False)  # another process starting on the same folder
        w.write(data[10:])
        assert w.commit() is True
    assert first.read(block_id) == data


def test_check_and_verify_find_rot_and_quarantine(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, fsync=False)
    block_id, b3, data = _block(6)
    store.put(block_id, data, blake3=b3)
    path = store.path(block_id)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"\xff\xff")
    assert store.check().corrupt_blocks == [block_id]
    with pytest.raises(BlockCorrupt):
        store.read(block_id, verify=True)
    assert not store.has(block_id)
    assert list((tmp_path / "quarantine").iterdir())
