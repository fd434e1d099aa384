"""Publishing a folder: cut it into blocks, send only the blocks the origin lacks, publish the manifest.

Two targets share one flow: `LocalTarget` writes into an origin's data folder directly,
`HttpTarget` talks to a running origin's operator API. Every file is cut (and so every
safetensors header validated) before the first block is sent, so a malformed input
leaves the store and the catalogue untouched.
"""

import asyncio
import mmap
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from tqdm import tqdm

from cachenet.blockstore import BlockStore
from cachenet.config import load_settings
from cachenet.errors import BadInput, ModelNotFound
from cachenet.httpclient import DEFAULT_TIMEOUT, auth_headers, raise_for_status
from cachenet.manifest import BaseRef, BlockRef, ModelManifest
from cachenet.names import parse_model_ref, validate_model_name
from cachenet.protocol.blocks import MissingAnswer, MissingQuery
from cachenet.protocol.codec import decode_json, encode_json
from cachenet.protocol.headers import BLAKE3_HEADER
from registry.catalogue import Catalogue
from registry.chunking import DEFAULT_MAX_BLOCK_BYTES, CutFile, cut_file, list_folder_files
from registry.config import OriginSettings
from registry.intake import check_no_collision, missing_blocks
from registry.lora import read_lora_config
from registry.servinglock import refuse_if_served

__all__ = ("HttpTarget", "LocalTarget", "PublishReport", "PublishTarget", "open_target", "publish_path")

UPLOAD_CONCURRENCY: Final = 4
_UPLOAD_PIECE_BYTES: Final = 1024 * 1024
_JSON: Final = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What a publish did, in bytes and blocks."""

    name: str
    revision: str
    tag: str
    files: int
    total_bytes: int
    unique_bytes: int
    stored_bytes: int
    blocks: int
    stored_blocks: int
    created: bool

    @property
    def deduplicated_bytes(self) -> int:
        """Bytes the origin did not have to store again (duplicates within and across models)."""
        return self.total_bytes - self.stored_bytes

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "name": self.name,
            "revision": self.revision,
            "tag": self.tag,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "unique_bytes": self.unique_bytes,
            "stored_bytes": self.stored_bytes,
            "deduplicated_bytes": self.deduplicated_bytes,
            "blocks": self.blocks,
            "stored_blocks": self.stored_blocks,
            "created": self.created,
        }


class PublishTarget(Protocol):
    """Where blocks and manifests go."""

    async def resolve_commit(self, name: str, revision: str) -> str:
        """The commit a published tag or commit names; raises `ModelNotFound`."""
        ...

    async def missing(self, block_ids: list[str]) -> set[str]:
        """Which of these blocks the origin lacks."""
        ...

    async def upload(self, ref: BlockRef, data: memoryview) -> None:
        """Send one block (verified by the receiver)."""
        ...

    async def publish(self, manifest: ModelManifest, tag: str) -> dict[str, Any]:
        """Publish the manifest once every block is there."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...


class LocalTarget:
    """An origin's data folder, written directly (no server needed)."""

    def __init__(self, settings: OriginSettings) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = BlockStore(settings.data_dir / "store", fsync=settings.fsync)
        self.catalogue = Catalogue(settings.database_url)
        self._unrecorded: list[tuple[str, str, int]] = []

    async def resolve_commit(self, name: str, revision: str) -> str:
        """The commit of a published revision."""
        return await asyncio.to_thread(self.catalogue.resolve_commit, name, revision)

    async def missing(self, block_ids: list[str]) -> set[str]:
        """Blocks not yet stored and recorded."""
        return set(await asyncio.to_thread(missing_blocks, self.store, self.catalogue, block_ids))

    async def upload(self, ref: BlockRef, data: memoryview) -> None:
        """Verify and store one block; it is recorded in the catalogue with the others at publish."""
        await asyncio.to_thread(check_no_collision, self.catalogue, ref)
        await asyncio.to_thread(self.store.put, ref.block_id, data, blake3=ref.blake3)
        self._unrecorded.append((ref.block_id, ref.blake3, ref.size))

    async def publish(self, manifest: ModelManifest, tag: str) -> dict[str, Any]:
        """Record the new blocks (one transaction), then the manifest, in the catalogue."""
        if self._unrecorded:
            await asyncio.to_thread(self.catalogue.record_blocks, self._unrecorded)
            self._unrecorded = []
        result = await asyncio.to_thread(self.catalogue.publish, manifest, tag=tag, is_stored=self.store.has)
        return {"revision": result.revision, "created": result.created}

    async def close(self) -> None:
        """Close the catalogue."""
        await asyncio.to_thread(self.catalogue.close)


class HttpTarget:
    """A running origin, through its operator API."""

    def __init__(self, origin_url: str, token: str | None) -> None:
        self.url = origin_url.rstrip("/")
        self.session = aiohttp.ClientSession(headers=auth_headers(token), timeout=DEFAULT_TIMEOUT)

    async def resolve_commit(self, name: str, revision: str) -> str:
        """The commit of a published revision, from the origin's manifest."""
        async with self.session.get(f"{self.url}/v1/models/{name}/revisions/{revision}") as resp:
            await raise_for_status(resp)
            return str((await resp.json())["revision"])

    async def missing(self, block_ids: list[str]) -> set[str]:
        """Ask the origin which blocks it lacks."""
        query = encode_json(MissingQuery(block_ids))
        async with self.session.post(f"{self.url}/v1/blocks/missing", data=query, headers=_JSON) as resp:
            await raise_for_status(resp)
            return set(decode_json(await resp.read(), MissingAnswer, what="the origin's missing-blocks answer").missing)

    async def upload(self, ref: BlockRef, data: memoryview) -> None:
        """PUT one block with its BLAKE3 digest."""
        headers = {
            BLAKE3_HEADER: ref.blake3,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), _UPLOAD_PIECE_BYTES):
                yield bytes(data[start : start + _UPLOAD_PIECE_BYTES])

        async with self.session.put(f"{self.url}/v1/blocks/{ref.block_id}", data=body(), headers=headers) as resp:
            await raise_for_status(resp)

    async def publish(self, manifest: ModelManifest, tag: str) -> dict[str, Any]:
        """POST the manifest."""
        url = f"{self.url}/v1/models/{manifest.name}/revisions"
        async with self.session.post(
            url, params={"tag": tag}, data=manifest.to_bytes(), headers={"Content-Type": "application/json"}
        ) as resp:
            await raise_for_status(resp)
            result: dict[str, Any] = await resp.json()
            return result

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.session.close()


def open_target(
    *,
    origin: str | None,
    token: str | None,
    data: Path | None,
    db: str | None = None,
    max_block_size: int | None = None,
) -> PublishTarget:
    """The publish target a command line names: a running origin (`--origin`) or its data folder (`--data`).

    Call it inside the event loop (an `HttpTarget` opens its session there). Raises `BadInput`
    unless exactly one of the two is given.
    """
    if bool(origin) == bool(data):
        raise BadInput(
            "give exactly one of --origin URL (a running origin; without it, the local cluster's when "
            "`cachenet up` runs in this folder) or --data DIR (the data folder of an origin that is not running)"
        )
    if origin:
        return HttpTarget(origin, token or os.environ.get("CACHENET_TOKEN"))
    overrides = {"data_dir": data, "db_url": db, "max_block_size": max_block_size}
    settings = load_settings(OriginSettings, None, os.environ, overrides)
    refuse_if_served(settings.data_dir)
    return LocalTarget(settings)


async def publish_path(
    path: Path,
    *,
    name: str,
    target: PublishTarget,
    base: str | None = None,
    tag: str = "main",
    metadata: dict[str, Any] | None = None,
    max_block_size: int = DEFAULT_MAX_BLOCK_BYTES,
    progress: bool | None = None,
) -> PublishReport:
    """Publish a file or folder (Hugging Face layout or PEFT adapter) as model `name`.

    Raises `BadInput` (malformed files, unknown base), `ModelNotFound` (base not
    published), `IntegrityError` (a block changed on disk during the publish).
    """
    validate_model_name(name)
    path = Path(path)
    lora = read_lora_config(path) if path.is_dir() else None
    base_ref = await _resolve_base(target, base, lora.base_model if lora else None)
    meta = dict(metadata or {})
    if lora is not None:
        meta["lora"] = lora.to_metadata()
    sources = list_folder_files(path)
    if not sources:
        raise BadInput(f"{path} holds no files to publish")
    total = sum(src.stat().st_size for src, _ in sources)
    disable = None if progress is None else not progress
    with tqdm(total=total, unit="B", unit_scale=True, desc="cutting", disable=disable, file=sys.stderr) as bar:
        cut: list[CutFile] = []
        for src, rel in sources:
            cut.append(await asyncio.to_thread(cut_file, src, rel, max_block_size=max_block_size, progress=bar.update))
    manifest = ModelManifest(name, tuple(c.manifest for c in cut), base_ref, meta)
    unique = manifest.unique_blocks()
    missing = await target.missing(list(unique))
    to_send = _blocks_to_send(cut, missing)
    send_bytes = sum(ref.size for ref, _src, _off in to_send)
    with tqdm(total=send_bytes, unit="B", unit_scale=True, desc="uploading", disable=disable, file=sys.stderr) as bar:
        semaphore = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def send(ref: BlockRef, src: Path, offset: int) -> None:
            async with semaphore:
                with _mapped(src) as mm, memoryview(mm) as whole, whole[offset : offset + ref.size] as part:
                    await target.upload(ref, part)
            bar.update(ref.size)

        await asyncio.gather(*(send(ref, src, off) for ref, src, off in to_send))
    result = await target.publish(manifest, tag)
    return PublishReport(
        name=name,
        revision=str(result["revision"]),
        tag=tag,
        files=len(manifest.files),
        total_bytes=manifest.total_size,
        unique_bytes=sum(r.size for r in unique.values()),
        stored_bytes=send_bytes,
        blocks=len(unique),
        stored_blocks=len(to_send),
        created=bool(result.get("created", True)),
    )


async def _resolve_base(target: PublishTarget, base: str | None, from_config: str | None) -> BaseRef | None:
    if base:
        base_name, base_rev = parse_model_ref(base)
        return BaseRef(base_name, await target.resolve_commit(base_name, base_rev))
    if from_config:
        try:
            base_name, base_rev = parse_model_ref(from_config)
            return BaseRef(base_name, await target.resolve_commit(base_name, base_rev))
        except (ModelNotFound, BadInput):
            raise BadInput(
                f"the adapter's base_model_name_or_path {from_config!r} is not a published model; "
                "publish the base first or name it with --base NAME[@REV]"
            ) from None
    return None


def _blocks_to_send(cut: list[CutFile], missing: set[str]) -> list[tuple[BlockRef, Path, int]]:
    chosen: dict[str, tuple[BlockRef, Path, int]] = {}
    for c in cut:
        for ref, offset in c.blocks():
            if ref.block_id in missing and ref.block_id not in chosen:
                chosen[ref.block_id] = (ref, c.source, offset)
    return list(chosen.values())


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        yield mm
