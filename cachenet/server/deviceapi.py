"""The read-only device API every server shares (origin and edge nodes), over a `ModelSource`.

Routes:

    GET|HEAD /v1/blocks/{block_id}                                  one block, Range, immutable
    GET      /v1/models                                             models and tags
    GET      /v1/models/{name}/revisions/{revision}                 manifest (canonical JSON)
    GET|HEAD /v1/models/{name}/revisions/{revision}/files/{path}    assembled file, Range
    GET|POST /api/models/{name}/...                                 Hugging Face metadata (`cachenet.server.hubapi`)
    GET|HEAD /{name}/resolve/{revision}/{path}                      Hugging Face file download

Names, revisions, paths and block ids are validated before anything else happens.
`If-None-Match` takes lists, weak tags and `*`; a download by commit is cached as immutable.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import quote

from aiohttp import web

from cachenet.blockid import validate_block_id
from cachenet.manifest import FileManifest, ModelManifest
from cachenet.names import parse_cell, validate_file_path, validate_model_name, validate_revision
from cachenet.protocol.headers import (
    BLAKE3_HEADER,
    CELL_HEADER,
    DEMAND_HEADER,
    HF_COMMIT_HEADER,
    HF_LINKED_ETAG_HEADER,
    HF_LINKED_SIZE_HEADER,
    ONLY_IF_CACHED_HEADER,
)
from cachenet.protocol.manifest import ManifestMessage
from cachenet.protocol.models import ModelEntry, ModelList
from cachenet.protocol.patterns import ROUTE_MODEL_NAME
from cachenet.ranges import parse_range
from cachenet.server.abortlog import AbortLog
from cachenet.server.conditional import none_match_hits
from cachenet.server.filesend import Pacer, send_file_range, write_or_cut
from cachenet.server.httpbody import message_response
from cachenet.server.hubapi import HubApi, git_oid, is_lfs_file
from cachenet.server.openapi import ApiDoc

__all__ = (
    "BlockHandle",
    "LocalBlock",
    "ModelSource",
    "SentHook",
    "StreamingBlock",
    "StreamingFile",
    "add_device_routes",
    "content_disposition",
    "git_oid",
    "is_lfs_file",
)

_BLOCK_PATTERN: Final = r"[^/]+"
IMMUTABLE: Final = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class LocalBlock:
    """A block held in a local file, served zero-copy."""

    path: Path
    size: int
    blake3: str | None = None


class StreamingBlock(Protocol):
    """A block still arriving (cut-through), readable by range as its bytes come in."""

    size: int
    blake3: str | None

    def iter_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) as they become available."""
        ...


BlockHandle = LocalBlock | StreamingBlock


@dataclass(frozen=True, slots=True)
class StreamingFile:
    """A whole file still arriving from an upstream (pull-through), streamed to requesters as it comes.

    `body` holds back the file's last bytes until the whole file verified against `sha256`.
    """

    path: str
    size: int
    sha256: str
    body: StreamingBlock


class ModelSource(Protocol):
    """Where a server's device API gets manifests and blocks (catalogue+store, or cache+upstream)."""

    pacer: Pacer | None

    async def list_models(self) -> list[ModelEntry]:
        """The models this server can serve."""
        ...

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of a model revision or tag; raises `ModelNotFound`."""
        ...

    async def resolve_file(
        self, name: str, revision: str, path: str
    ) -> tuple[ModelManifest, FileManifest | StreamingFile]:
        """The revision and one of its files (a mirror may stream just that file in); raises `NotFound`."""
        ...

    async def open_block(
        self, block_id: str, *, blake3: str | None = None, model: str | None = None, only_if_cached: bool = False
    ) -> BlockHandle:
        """A block ready to send; raises `BlockNotFound` (or an upstream error on a failed miss).

        `model` names the model whose file is being served (for sharing-aware caching);
        `only_if_cached` forbids an upstream fetch (peers ask that way, so misses never cascade).
        """
        ...

    def note_request(self, manifest: ModelManifest, f: FileManifest | None, *, cell: str | None) -> None:
        """Count a device's request for a file of a model, or for the whole model (`f` None): demand."""
        ...


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII `filename` fallback and the exact name as RFC 6266 / 5987 `filename*`."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


SentHook = Callable[[web.Request, int], None]


def add_device_routes(
    app: web.Application, source: ModelSource, doc: ApiDoc, *, on_sent: SentHook | None = None
) -> None:
    """Register the device API on `app`, serving from `source`; `on_sent` hears of every body sent whole."""
    api = _DeviceApi(source, on_sent)
    r = app.router
    name = f"{{name:{ROUTE_MODEL_NAME}}}"
    block = f"{{block_id:{_BLOCK_PATTERN}}}"
    file_path = "{path:.+}"
    doc.route(
        r,
        "GET",
        f"/v1/blocks/{block}",
        api.get_block,
        summary="Get a block by id",
        content="application/octet-stream",
        responses={200: "block bytes", 206: "partial block", 304: "not modified"},
    )
    doc.route(
        r,
        "HEAD",
        f"/v1/blocks/{block}",
        api.get_block,
        summary="Block headers",
        content="",
        responses={200: "block exists"},
    )
    doc.route(
        r,
        "GET",
        "/v1/models",
        api.list_models,
        summary="List models and their tags",
        schema=ModelList,
    )
    doc.route(
        r,
        "GET",
        f"/v1/models/{name}/revisions/{{revision}}",
        api.get_manifest,
        summary="Get a model manifest by revision or tag",
        schema=ManifestMessage,
    )
    doc.route(
        r,
        "GET",
        f"/v1/models/{name}/revisions/{{revision}}/files/{file_path}",
        api.get_file,
        summary="Download an assembled file",
        content="application/octet-stream",
        responses={200: "file bytes", 206: "partial file"},
    )
    doc.route(
        r,
        "HEAD",
        f"/v1/models/{name}/revisions/{{revision}}/files/{file_path}",
        api.get_file,
        summary="Assembled file headers",
        content="",
    )
    HubApi(source, api.read_whole).add_routes(app, doc, name, file_path)
    doc.route(
        r,
        "GET",
        f"/{name}/resolve/{{revision}}/{file_path}",
        api.hf_resolve,
        summary="Hugging Face file download",
        content="application/octet-stream",
        responses={200: "file bytes", 206: "partial file"},
    )
    doc.route(
        r,
        "HEAD",
        f"/{name}/resolve/{{revision}}/{file_path}",
        api.hf_resolve,
        summary="Hugging Face file metadata",
        content="",
    )


class _DeviceApi:
    def __init__(self, source: ModelSource, on_sent: SentHook | None) -> None:
        self.source = source
        self.on_sent = on_sent
        self.aborts = AbortLog()

    async def get_block(self, request: web.Request) -> web.StreamResponse:
        block_id = validate_block_id(request.match_info["block_id"])
        etag = f'"{block_id}"'
        if none_match_hits(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
        only_if_cached = request.headers.get(ONLY_IF_CACHED_HEADER) == "1"
        handle = await self.source.open_block(block_id, only_if_cached=only_if_cached)
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "Content-Type": "application/octet-stream"}
        if handle.blake3:
            headers[BLAKE3_HEADER] = handle.blake3

        async def pieces(start: int, end: int) -> AsyncIterator[Piece]:
            yield handle, start, end

        return await self._send(request, handle.size, headers, pieces)

    async def list_models(self, request: web.Request) -> web.Response:
        return message_response(ModelList(await self.source.list_models()))

    async def get_manifest(self, request: web.Request) -> web.Response:
        manifest = await self._manifest(request)
        if request.headers.get(DEMAND_HEADER) == "1":
            self.source.note_request(manifest, None, cell=request.headers.get(CELL_HEADER))
        headers = {"ETag": f'"{manifest.revision}"', HF_COMMIT_HEADER: manifest.revision}
        if validate_revision(request.match_info["revision"]) == manifest.revision:
            headers["Cache-Control"] = IMMUTABLE
        else:
            headers["Cache-Control"] = "no-cache"
        if none_match_hits(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=headers)
        return web.Response(body=manifest.to_bytes(), content_type="application/json", headers=headers)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        manifest, f = await self._file(request)
        if isinstance(f, FileManifest):
            self.source.note_request(manifest, f, cell=parse_cell(request.headers.get(CELL_HEADER)))
        return await self._send_file(request, manifest, f)

    async def read_whole(self, manifest: ModelManifest, f: FileManifest) -> bytes:
        """A (small) file's bytes, assembled from its blocks."""
        out = bytearray()
        async for handle, lo, hi in _FileParts(self.source, f, manifest.name).pieces(0, f.size):
            if isinstance(handle, LocalBlock):
                out += await asyncio.to_thread(_read_range, handle.path, lo, hi)
            else:
                async for chunk in handle.iter_range(lo, hi):
                    out += chunk
        return bytes(out)

    async def hf_resolve(self, request: web.Request) -> web.StreamResponse:
        manifest, f = await self._file(request)
        if isinstance(f, FileManifest):
            self.source.note_request(manifest, f, cell=parse_cell(request.headers.get(CELL_HEADER)))
        return await self._send_file(request, manifest, f)

    # -- helpers ---------------------------------------------------------------------

    async def _manifest(self, request: web.Request) -> ModelManifest:
        name = validate_model_name(request.match_info["name"])
        revision = validate_revision(request.match_info.get("revision", "main"))
        return await self.source.manifest(name, revision)

    async def _file(self, request: web.Request) -> tuple[ModelManifest, FileManifest | StreamingFile]:
        name = validate_model_name(request.match_info["name"])
        revision = validate_revision(request.match_info.get("revision", "main"))
        path = validate_file_path(request.match_info["path"])
        return await self.source.resolve_file(name, revision, path)

    async def _send_file(
        self, request: web.Request, manifest: ModelManifest, f: FileManifest | StreamingFile
    ) -> web.StreamResponse:
        etag = f'"{f.sha256}"'
        headers = {
            "ETag": etag,
            HF_COMMIT_HEADER: manifest.revision,
            "Content-Type": "application/octet-stream",
            "Content-Disposition": content_disposition(f.path.rsplit("/", 1)[-1]),
        }
        if isinstance(f, StreamingFile) or is_lfs_file(f):
            headers[HF_LINKED_ETAG_HEADER] = etag
            headers[HF_LINKED_SIZE_HEADER] = str(f.size)
        # A download by commit never changes; by tag it may move.
        by_commit = validate_revision(request.match_info.get("revision", "main")) == manifest.revision
        headers["Cache-Control"] = IMMUTABLE if by_commit else "no-cache"
        if none_match_hits(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        if isinstance(f, StreamingFile):
            body = f.body

            async def streamed(start: int, end: int) -> AsyncIterator[Piece]:
                yield body, start, end

            return await self._send(request, f.size, headers, streamed)
        return await self._send(request, f.size, headers, _FileParts(self.source, f, manifest.name).pieces)

    async def _send(
        self,
        request: web.Request,
        size: int,
        headers: dict[str, str],
        parts: Callable[[int, int], AsyncIterator["Piece"]],
    ) -> web.StreamResponse:
        rng = parse_range(request.headers.get("Range"), size)
        start, end = rng if rng is not None else (0, size)
        resp = web.StreamResponse(status=206 if rng is not None else 200, headers=headers)
        resp.headers["Accept-Ranges"] = "bytes"
        if rng is not None:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        resp.content_length = end - start
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        # Open the first block before the status line goes out, so a miss that fails
        # upstream becomes a proper error response rather than a truncated body.
        pieces = parts(start, end)
        first = await anext(pieces, None)
        await resp.prepare(request)
        pacer = self.source.pacer
        piece = first
        try:
            while piece is not None:
                handle, lo, hi = piece
                if isinstance(handle, LocalBlock):
                    await send_file_range(request, resp, handle.path, lo, hi, pacer=pacer)
                else:
                    async for chunk in handle.iter_range(lo, hi):
                        if pacer is not None:
                            await pacer(len(chunk))
                        await write_or_cut(resp, chunk)
                piece = await anext(pieces, None)
        except (ConnectionError, TimeoutError) as e:
            # The client went away or stopped reading: normal, so no traceback, and the
            # (closed) response is returned as is.
            if request.transport is not None:
                request.transport.close()
            self.aborts.note(e, request.path)
            return resp
        except BaseException:
            # The status line is out: the only honest signal left is to cut the
            # connection, so the client sees a short body instead of waiting forever.
            if request.transport is not None:
                request.transport.close()
            raise
        await resp.write_eof()
        if self.on_sent is not None:
            self.on_sent(request, end - start)
        return resp


Piece = tuple[BlockHandle, int, int]


def _read_range(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


class _FileParts:
    """The block pieces that make bytes [start, end) of a file, opened one at a time."""

    def __init__(self, source: ModelSource, f: FileManifest, model: str) -> None:
        self.source, self.f, self.model = source, f, model

    async def pieces(self, start: int, end: int) -> AsyncIterator[Piece]:
        for ref, lo, hi in self.f.segments_in(start, end):
            yield await self.source.open_block(ref.block_id, blake3=ref.blake3, model=self.model), lo, hi
