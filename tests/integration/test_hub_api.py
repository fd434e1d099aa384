"""huggingface_hub, unmodified, against the origin and an edge node: the Hub API around the downloads.

Each call a Hugging Face client makes gets the answer (return value or exception class)
it gets from the Hub: missing repositories, revisions and files are told apart by
`X-Error-Code`, `get_paths_info`, `list_repo_refs`, `list_repo_commits` and
`model_info(files_metadata=True)` work, and `hf download` (the CLI) says what is missing.
"""

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from safetensors.numpy import save_file

from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN

NAME = "acme/tiny"
MISSING_COMMIT = "0" * 40
LARGE_BYTES = 11 * 1024 * 1024 + 17


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _model_folder(root: Path) -> Path:
    folder = root / "tiny"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "model_type": "bert"}))
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    (folder / "README.md").write_text("# tiny\n")
    rng = np.random.default_rng(7)
    save_file({"w": rng.standard_normal((64, 8)).astype(np.float32)}, str(folder / "model.safetensors"))
    # Over 10 MiB: an LFS file though not safetensors (huggingface_hub with hf_xet falls back to HTTP).
    (folder / "pytorch_model.bin").write_bytes(rng.bytes(LARGE_BYTES))
    return folder


@pytest.fixture(params=["origin", "edge"])
async def node(
    request: pytest.FixtureRequest, origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path
) -> tuple[str, Path]:
    """(base URL of the node under test, the published folder)."""
    folder = _model_folder(tmp_path)
    target = HttpTarget(_url(origin_server), OPERATOR_TOKEN)
    try:
        await publish_path(folder, name=NAME, target=target, progress=False)
    finally:
        await target.close()
    if request.param == "origin":
        return _url(origin_server), folder
    edge = await edge_factory(origin=origin_server)
    return _url(edge), folder


async def test_missing_repo_revision_and_file_raise_the_hub_exceptions(node: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = node
    api = HfApi(endpoint=base, token=False)

    def checks() -> None:
        assert api.repo_exists(NAME) is True
        assert api.repo_exists("acme/missing") is False
        assert api.revision_exists(NAME, "main") is True
        assert api.revision_exists(NAME, "nope") is False
        assert api.revision_exists(NAME, MISSING_COMMIT) is False
        assert api.revision_exists("acme/missing", "main") is False
        assert api.file_exists(NAME, "config.json") is True
        assert api.file_exists(NAME, "nope.json") is False
        assert api.file_exists(NAME, "config.json", revision="nope") is False
        assert api.file_exists("acme/missing", "config.json") is False
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("acme/missing")
        with pytest.raises(RevisionNotFoundError):
            api.model_info(NAME, revision="nope")
        cache = tmp_path / "cache"
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(NAME, "nope.json", endpoint=base, cache_dir=cache, token=False)
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download(NAME, "config.json", revision="nope", endpoint=base, cache_dir=cache, token=False)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("acme/missing", "config.json", endpoint=base, cache_dir=cache, token=False)
        with pytest.raises(EntryNotFoundError):
            list(api.list_repo_tree(NAME, path_in_repo="nofolder"))

    await asyncio.to_thread(checks)


async def test_paths_info_refs_commits_and_files_metadata(node: tuple[str, Path]) -> None:
    base, folder = node
    api = HfApi(endpoint=base, token=False)
    config = (folder / "config.json").read_bytes()
    weights = (folder / "model.safetensors").read_bytes()

    def checks() -> None:
        info = api.model_info(NAME, files_metadata=True)
        assert info.sha is not None and len(info.sha) == 40
        siblings = {s.rfilename: s for s in info.siblings or []}
        assert set(siblings) == {
            "config.json",
            "tokenizer/vocab.txt",
            "README.md",
            "model.safetensors",
            "pytorch_model.bin",
        }
        big = siblings["pytorch_model.bin"].lfs
        assert big is not None and big.size == LARGE_BYTES
        assert siblings["config.json"].blob_id == _git_blob(config)
        assert siblings["config.json"].size == len(config)
        assert siblings["config.json"].lfs is None
        lfs = siblings["model.safetensors"].lfs
        assert lfs is not None
        assert lfs.sha256 == hashlib.sha256(weights).hexdigest() and lfs.size == len(weights)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{lfs.sha256}\nsize {len(weights)}\n"
        assert siblings["model.safetensors"].blob_id == _git_blob(pointer.encode())
        assert lfs.pointer_size == len(pointer)

        entries = api.get_paths_info(NAME, ["config.json", "tokenizer", "model.safetensors", "absent.txt"])
        by_path = {e.path: e for e in entries}
        assert set(by_path) == {"config.json", "tokenizer", "model.safetensors"}
        cfg = by_path["config.json"]
        assert isinstance(cfg, RepoFile) and cfg.blob_id == _git_blob(config) and cfg.size == len(config)
        assert isinstance(by_path["tokenizer"], RepoFolder)
        st = by_path["model.safetensors"]
        assert isinstance(st, RepoFile) and st.lfs is not None and st.lfs.sha256 == lfs.sha256
        with pytest.raises(RevisionNotFoundError):
            api.get_paths_info(NAME, ["config.json"], revision="nope")
        with pytest.raises(RepositoryNotFoundError):
            api.get_paths_info("acme/missing", ["config.json"])

        tree = {e.path: e for e in api.list_repo_tree(NAME, recursive=True)}
        assert isinstance(tree["config.json"], RepoFile) and tree["config.json"].blob_id == _git_blob(config)

        refs = api.list_repo_refs(NAME)
        assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", info.sha)]
        assert refs.tags == [] and refs.converts == []
        with pytest.raises(RepositoryNotFoundError):
            api.list_repo_refs("acme/missing")

        commits = api.list_repo_commits(NAME)
        assert commits[0].commit_id == info.sha
        assert api.list_repo_commits(NAME, revision=info.sha)[0].commit_id == info.sha
        with pytest.raises(RevisionNotFoundError):
            api.list_repo_commits(NAME, revision="nope")
        with pytest.raises(RepositoryNotFoundError):
            api.list_repo_commits("acme/missing")

    await asyncio.to_thread(checks)


async def test_downloads_give_identical_files(node: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = node
    originals = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def checks() -> None:
        snap = Path(snapshot_download(NAME, endpoint=base, cache_dir=tmp_path / "snap", token=False))
        got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
        assert got == originals
        one = hf_hub_download(NAME, "tokenizer/vocab.txt", endpoint=base, cache_dir=tmp_path / "one", token=False)
        assert Path(one).read_bytes() == originals["tokenizer/vocab.txt"]
        # huggingface_hub 2.x installs hf_xet; with no Xet headers from us it downloads over HTTP.
        big = hf_hub_download(NAME, "pytorch_model.bin", endpoint=base, cache_dir=tmp_path / "big", token=False)
        assert Path(big).read_bytes() == originals["pytorch_model.bin"]
        fs = HfFileSystem(endpoint=base, token=False, skip_instance_cache=True)
        assert sorted(str(p) for p in fs.ls(NAME, detail=False)) == sorted(
            f"{NAME}/{p}" for p in ("README.md", "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer")
        )
        with fs.open(f"{NAME}/model.safetensors", "rb") as fh:
            assert fh.read() == originals["model.safetensors"]
        assert fs.exists(f"{NAME}/nope.json") is False  # type: ignore[no-untyped-call]

    await asyncio.to_thread(checks)


async def test_http_semantics_of_downloads(node: tuple[str, Path]) -> None:
    base, folder = node
    size = (folder / "model.safetensors").stat().st_size
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/api/models/{NAME}") as resp:
            commit = (await resp.json())["sha"]
        url = f"{base}/{NAME}/resolve/main/model.safetensors"
        async with s.get(url, headers={"Range": f"bytes={size}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{size}"
        async with s.head(url) as resp:
            etag = resp.headers["ETag"]
            assert "immutable" not in resp.headers.get("Cache-Control", "")
        for header in (f"W/{etag}", f'"other", {etag}', "*"):
            async with s.get(url, headers={"If-None-Match": header}) as resp:
                assert resp.status == 304, header
        async with s.get(url, headers={"If-None-Match": '"other"'}) as resp:
            assert resp.status == 200
        async with s.head(f"{base}/{NAME}/resolve/{commit}/model.safetensors") as resp:
            assert resp.status == 200
            assert "immutable" in resp.headers["Cache-Control"]
        for path, code in (
            (f"/{NAME}/resolve/main/nope.json", "EntryNotFound"),
            (f"/{NAME}/resolve/nope/config.json", "RevisionNotFound"),
            ("/acme/missing/resolve/main/config.json", "RepoNotFound"),
        ):
            async with s.head(f"{base}{path}") as resp:
                assert resp.status == 404 and resp.headers["X-Error-Code"] == code, path


@pytest.mark.parametrize(
    ("repo", "args", "says"),
    [
        ("acme/missing", [], "Model 'acme/missing' not found"),
        (NAME, ["--revision", "nope"], f"Revision not found in model '{NAME}'"),
        (NAME, ["nope.json"], f"File not found in model '{NAME}'"),
    ],
)
async def test_hf_cli_download_says_what_is_missing(
    node: tuple[str, Path], tmp_path: Path, repo: str, args: list[str], says: str
) -> None:
    base, _ = node
    hf = Path(sys.executable).parent / "hf"
    cmd = [str(hf)] if hf.exists() else [sys.executable, "-m", "huggingface_hub.cli.hf"]
    env = {**os.environ, "HF_ENDPOINT": base, "HF_HOME": str(tmp_path / "hf-home"), "NO_COLOR": "1"}
    env.pop("HF_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        "download",
        repo,
        *args,
        "--local-dir",
        str(tmp_path / "out"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = (out + err).decode()
    assert proc.returncode != 0, text
    assert says.lower() in text.lower(), text
    assert "check your connection" not in text.lower() and "Traceback" not in text, text
