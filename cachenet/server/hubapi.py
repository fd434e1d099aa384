"""The Hugging Face Hub API around the downloads, shared by the origin and edge nodes.

Routes (registered by `add_device_routes`, which serves the downloads themselves):

    GET  /api/models/{name}[/revision/{revision}]        model info; `?blobs=true` adds blobId and lfs
    GET  /api/models/{name}/tree/{revision}[/{path}]     tree listing
    POST /api/models/{name}/paths-info/{revision}        entries for the given paths (form or JSON body)
    GET  /api/models/{name}/refs                         branches (cachenet tags) and their commits
    GET  /api/models/{name}/commits/{revision}           the revision and the model's older revisions

A missing model, revision or path answers 404 with `X-Error-Code` RepoNotFound,
RevisionNotFound or EntryNotFound (see `cachenet.server.middlewares.json_error`), which
is how huggingface_hub picks its exception class.

Blob ids are Git's, as on the Hub: for an LFS file the blob id of its LFS pointer, for a
small file the blob id of its content (a SHA-1 over the file, computed once per content
and remembered).
"""

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol
from urllib.parse import parse_qs

from aiohttp import web

from cachenet.errors import BadInput, CachenetError, FileNotInModel
from cachenet.manifest import FileManifest, ModelManifest
from cachenet.names import validate_file_path, validate_model_name, validate_revision
from cachenet.protocol.headers import HF_COMMIT_HEADER
from cachenet.protocol.models import ModelEntry
from cachenet.server.httpbody import read_body
from cachenet.server.openapi import ApiDoc

__all__ = ("HubApi", "LFS_MIN_BYTES", "ReadWhole", "git_blob_id", "git_oid", "is_lfs_file", "lfs_pointer")

# Files at least this big, and every safetensors file, are presented as Git LFS files,
# whose Hugging Face ETag is the SHA-256 of the content (clients verify downloads with it).
LFS_MIN_BYTES: Final = 10 * 1024 * 1024
# Bounds on what one request may ask for.
MAX_PATHS: Final = 1000
_MAX_PATHS_BODY: Final = 1024 * 1024
_PARSE_ON_LOOP_MAX_BYTES: Final = 64 * 1024
_MAX_COMMITS: Final = 1000
_BLOB_IDS_KEPT: Final = 16384
_EPOCH: Final = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(0))

ReadWhole = Callable[[ModelManifest, FileManifest], Awaitable[bytes]]


class HubSource(Protocol):
    """What the Hub routes need from a server's `ModelSource`."""

    async def list_models(self) -> list[ModelEntry]:
        """The models (name, tags, revisions newest first)."""
        ...

    async def manifest(self, name: str, revision: str) -> ModelManifest:
        """The manifest of a revision or tag; raises `RepoNotFound` / `RevisionNotFound`."""
        ...


def is_lfs_file(f: FileManifest) -> bool:
    """Whether a file is presented to Hugging Face clients as an LFS file (ETag = SHA-256)."""
    return f.kind == "safetensors" or f.size >= LFS_MIN_BYTES


def lfs_pointer(f: FileManifest) -> bytes:
    """The Git LFS pointer file of a file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.sha256}\nsize {f.size}\n".encode()


def git_blob_id(content: bytes) -> str:
    """Git's blob id (SHA-1 of `blob <size>\\0<content>`)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def git_oid(f: FileManifest) -> str:
    """The blob id of an LFS file (its pointer's); a small file needs its content (`HubApi.blob_id`)."""
    return git_blob_id(lfs_pointer(f))


class HubApi:
    """Handlers of the Hub metadata routes over a source; `read_whole` reads a small file's bytes."""

    def __init__(self, source: HubSource, read_whole: ReadWhole) -> None:
        self.source = source
        self.read_whole = read_whole
        self._blob_ids: OrderedDict[str, str] = OrderedDict()  # sha256 -> git blob id, bounded

    def add_routes(self, app: web.Application, doc: ApiDoc, name: str, file_path: str) -> None:
        """Register the routes; the specific ones first (a one-part name could swallow `refs`)."""
        r = app.router
        info_query = {"blobs": {"type": "boolean"}}
        tree_query = {"recursive": {"type": "boolean"}, "expand": {"type": "boolean"}}
        doc.route(r, "GET", f"/api/models/{name}/refs", self.refs, summary="Hugging Face refs", schema=_REFS)
        doc.route(
            r, "GET", f"/api/models/{name}/commits/{{revision}}", self.commits, summary="Commits", schema=_COMMITS
        )
        doc.route(
            r,
            "POST",
            f"/api/models/{name}/paths-info/{{revision}}",
            self.paths_info,
            summary="Hugging Face paths info",
            body=_PATHS_BODY,
            schema=_TREE,
        )
        doc.route(
            r,
            "GET",
            f"/api/models/{name}/revision/{{revision}}",
            self.model_info,
            summary="Hugging Face model info at a revision",
            query=info_query,
            schema=_INFO,
        )
        doc.route(
            r, "GET", f"/api/models/{name}/tree/{{revision}}", self.tree, summary="Tree", query=tree_query, schema=_TREE
        )
        doc.route(
            r,
            "GET",
            f"/api/models/{name}/tree/{{revision}}/{file_path}",
            self.tree,
            summary="Tree under a folder",
            query=tree_query,
            schema=_TREE,
        )
        doc.route(
            r, "GET", f"/api/models/{name}", self.model_info, summary="Model info", query=info_query, schema=_INFO
        )

    # -- handlers --------------------------------------------------------------------

    async def model_info(self, request: web.Request) -> web.Response:
        manifest = await self._manifest(request)
        with_blobs = _flag(request.query.get("blobs"))
        siblings = []
        for f in manifest.files:
            sibling: dict[str, Any] = {"rfilename": f.path, "size": f.size}
            if with_blobs:
                sibling["blobId"] = await self.blob_id(manifest, f)
                if is_lfs_file(f):
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f))}
            siblings.append(sibling)
        doc = {
            "_id": manifest.revision[:24],
            "id": manifest.name,
            "modelId": manifest.name,
            "sha": manifest.revision,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "createdAt": _EPOCH,
            "lastModified": _EPOCH,
            "cardData": {"base_model": manifest.base.name} if manifest.base else {},
            "siblings": siblings,
            "usedStorage": manifest.total_size,
        }
        return web.json_response(doc, headers={HF_COMMIT_HEADER: manifest.revision})

    async def tree(self, request: web.Request) -> web.Response:
        manifest = await self._manifest(request)
        prefix = request.match_info.get("path", "")
        if prefix:
            prefix = validate_file_path(prefix.rstrip("/")) + "/"
        recursive = _flag(request.query.get("recursive"))
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for f in manifest.files:
            if not f.path.startswith(prefix):
                continue
            parts = f.path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                d = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and d not in dirs:
                    dirs.add(d)
                    entries.append(_folder(d))
            if recursive or len(parts) == 1:
                entries.append(await self._file_entry(manifest, f))
        if prefix and not entries:
            raise FileNotInModel(f"{manifest.name} has no folder {prefix!r}", path=prefix)
        return web.json_response(entries, headers={HF_COMMIT_HEADER: manifest.revision})

    async def paths_info(self, request: web.Request) -> web.Response:
        manifest = await self._manifest(request)
        wanted = await _paths_from_body(request)
        by_path = {f.path: f for f in manifest.files}
        folders = {f.path.rsplit("/", i)[0] for f in manifest.files for i in range(1, f.path.count("/") + 1)}
        entries: list[dict[str, Any]] = []
        for path in dict.fromkeys(wanted):  # as the Hub: unknown paths are left out, not errors
            if path in by_path:
                entries.append(await self._file_entry(manifest, by_path[path]))
            elif path in folders:
                entries.append(_folder(path))
        return web.json_response(entries, headers={HF_COMMIT_HEADER: manifest.revision})

    async def refs(self, request: web.Request) -> web.Response:
        name = validate_model_name(request.match_info["name"])
        tags, _ = await self._history(name)
        branches = [
            {"name": tag, "ref": f"refs/heads/{tag}", "targetCommit": commit} for tag, commit in sorted(tags.items())
        ]
        return web.json_response({"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    async def commits(self, request: web.Request) -> web.Response:
        manifest = await self._manifest(request)
        _, revisions = await self._history(manifest.name)
        dates = dict(revisions)
        # Revisions newest first; the history of a revision is it and what was published before it.
        mine = dates.get(manifest.revision)
        older = [c for c, t in revisions if c != manifest.revision and (mine is None or t <= mine)]
        out = [_commit(manifest.name, c, dates.get(c)) for c in [manifest.revision, *older][:_MAX_COMMITS]]
        return web.json_response(out, headers={HF_COMMIT_HEADER: manifest.revision})

    # -- helpers ---------------------------------------------------------------------

    async def blob_id(self, manifest: ModelManifest, f: FileManifest) -> str:
        """The Git blob id of a file: of its LFS pointer, or of its content (remembered by SHA-256)."""
        if is_lfs_file(f):
            return git_oid(f)
        known = self._blob_ids.get(f.sha256)
        if known is None:
            try:
                content = await self.read_whole(manifest, f)
            except CachenetError:
                # Bytes out of reach (an edge node cut off from the origin): a listing still
                # answers, with a stable stand-in id that is not remembered.
                return f.sha256[:40]
            known = await asyncio.to_thread(git_blob_id, content)
            self._blob_ids[f.sha256] = known
            while len(self._blob_ids) > _BLOB_IDS_KEPT:
                self._blob_ids.popitem(last=False)
        else:
            self._blob_ids.move_to_end(f.sha256)
        return known

    async def _file_entry(self, manifest: ModelManifest, f: FileManifest) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": await self.blob_id(manifest, f), "size": f.size, "path": f.path}
        if is_lfs_file(f):
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f))}
        return entry

    async def _manifest(self, request: web.Request) -> ModelManifest:
        name = validate_model_name(request.match_info["name"])
        revision = validate_revision(request.match_info.get("revision", "main"))
        return await self.source.manifest(name, revision)

    async def _history(self, name: str) -> tuple[dict[str, str], list[tuple[str, float]]]:
        """The model's tags and its (commit, publish time) newest first; `RepoNotFound` when unknown."""
        for m in await self.source.list_models():
            if m.name == name:
                return dict(m.tags), [(r.commit, r.created_at) for r in m.revisions]
        manifest = await self.source.manifest(name, "main")  # raises RepoNotFound
        return {"main": manifest.revision}, [(manifest.revision, 0.0)]


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _folder(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": "0" * 40, "size": 0, "path": path}


def _commit(name: str, commit: str, created: float | None) -> dict[str, Any]:
    when = created or 0
    date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when))
    title = f"publish {name}"
    return {"id": commit, "title": title, "message": "", "authors": [{"user": "cachenet"}], "date": date}


async def _paths_from_body(request: web.Request) -> list[str]:
    """The `paths` of a paths-info request: a form (as huggingface_hub sends) or JSON, bounded."""
    raw = await read_body(request, limit=_MAX_PATHS_BODY)
    if len(raw) <= _PARSE_ON_LOOP_MAX_BYTES:
        return _parse_paths(raw, request.content_type)
    return await asyncio.to_thread(_parse_paths, raw, request.content_type)  # parsing costs with the size


def _parse_paths(raw: bytes, content_type: str) -> list[str]:
    paths: object
    if content_type == "application/json":
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:  # RecursionError: deeply nested arrays
            raise BadInput(f"paths-info body is not JSON: {e}") from None
        paths = doc.get("paths") if isinstance(doc, dict) else None
        if isinstance(paths, str):
            paths = [paths]
    else:
        try:
            paths = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=MAX_PATHS + 2).get("paths")
        except (UnicodeDecodeError, ValueError) as e:
            raise BadInput(f"paths-info form is malformed: {e}") from None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise BadInput("paths-info needs 'paths': one or more file or folder paths")
    if len(paths) > MAX_PATHS:
        raise BadInput(f"paths-info takes at most {MAX_PATHS} paths, got {len(paths)}")
    return [validate_file_path(p.strip("/")) for p in paths]


_INFO: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "sha", "siblings"],
    "properties": {
        "id": {"type": "string"},
        "sha": {"type": "string"},
        "siblings": {"type": "array", "items": {"type": "object", "required": ["rfilename"]}},
    },
}
_TREE: Final[dict[str, Any]] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "path", "oid", "size"],
        "properties": {"type": {"enum": ["file", "directory"]}, "path": {"type": "string"}},
    },
}
_REF: Final[dict[str, Any]] = {
    "type": "array",
    "items": {"type": "object", "required": ["name", "ref", "targetCommit"]},
}
_REFS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["branches", "tags", "converts", "pullRequests"],
    "properties": {"branches": _REF, "tags": _REF, "converts": _REF, "pullRequests": _REF},
}
_COMMITS: Final[dict[str, Any]] = {
    "type": "array",
    "items": {"type": "object", "required": ["id", "title", "message", "authors", "date"]},
}
_PATHS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["paths"],
    "properties": {
        "paths": {"type": "array", "minItems": 1, "maxItems": MAX_PATHS, "items": {"type": "string"}},
        "expand": {"type": "boolean"},
    },
}
_PATHS_BODY: Final[dict[str, Any]] = {
    "application/x-www-form-urlencoded": {"schema": _PATHS_SCHEMA},
    "application/json": {"schema": _PATHS_SCHEMA},
}
