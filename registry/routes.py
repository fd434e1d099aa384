"""Operator routes of the origin: missing blocks, block uploads, publishing manifests, placement runs."""

import asyncio
import json

from aiohttp import web

from cachenet.blockid import validate_blake3, validate_block_id
from cachenet.errors import BadInput, BlockCorrupt, ManifestInvalid
from cachenet.manifest import MAX_MANIFEST_BYTES, BlockRef, ModelManifest
from cachenet.names import validate_model_name, validate_revision
from cachenet.protocol.blocks import MissingAnswer, MissingQuery, PublishAnswer, UploadAnswer
from cachenet.protocol.codec import decode_json
from cachenet.protocol.headers import BLAKE3_HEADER
from cachenet.protocol.manifest import ManifestMessage
from cachenet.protocol.models import SharingAnswer
from cachenet.protocol.patterns import ROUTE_MODEL_NAME
from cachenet.protocol.placement import PlacementRun, PlacementRunBody, PlacementRunList, StoredRun
from cachenet.server.httpbody import message_response, query_int, read_body, read_message
from cachenet.server.middlewares import require_token
from cachenet.server.openapi import ApiDoc
from registry.intake import check_no_collision, missing_blocks
from registry.keys import catalogue_key, settings_key, store_key

__all__ = ("add_operator_routes",)

MAX_PLACEMENT_RUN_BYTES = 16 * 1024 * 1024
MAX_PLACEMENT_RUNS_LISTED = 1000
_READ_BYTES = 1024 * 1024


def add_operator_routes(app: web.Application, doc: ApiDoc) -> None:
    """Register the origin's operator API (bearer token) on `app`."""
    r = app.router
    doc.route(
        r,
        "POST",
        "/v1/blocks/missing",
        missing,
        operator=True,
        summary="Which of these block ids the origin lacks",
        body=MissingQuery,
        schema=MissingAnswer,
    )
    doc.route(
        r,
        "PUT",
        "/v1/blocks/{block_id}",
        upload_block,
        operator=True,
        summary="Upload one block (verified against its id and the X-Block-Blake3 header)",
        body={"application/octet-stream": {}},
        responses={201: "stored", 200: "already stored"},
        schema=UploadAnswer,
    )
    doc.route(
        r,
        "POST",
        f"/v1/models/{{name:{ROUTE_MODEL_NAME}}}/revisions",
        publish,
        operator=True,
        summary="Publish a manifest and move a tag to it",
        query={"tag": {"type": "string"}},
        body=ManifestMessage,
        responses={201: "published", 200: "already published (the tag moved to it)"},
        schema=PublishAnswer,
    )
    doc.route(
        r,
        "GET",
        f"/v1/models/{{name:{ROUTE_MODEL_NAME}}}/revisions/{{revision}}/sharing",
        sharing,
        summary="Bytes of this revision's blocks that each other model also uses",
        schema=SharingAnswer,
    )
    doc.route(
        r,
        "POST",
        "/v1/placement-runs",
        add_placement_run,
        operator=True,
        summary="Store a placement run (the controller's run JSON) in the catalogue",
        body=PlacementRunBody,
        responses={201: 'stored; the body is {"id": <catalogue id>}'},
        schema=StoredRun,
    )
    doc.route(
        r,
        "GET",
        "/v1/placement-runs",
        list_placement_runs,
        summary="The most recent placement runs, newest first",
        query={"limit": {"type": "integer", "minimum": 1, "maximum": MAX_PLACEMENT_RUNS_LISTED}},
        schema=PlacementRunList,
    )


async def missing(request: web.Request) -> web.Response:
    """POST /v1/blocks/missing {"block_ids": [...]} → {"missing": [...]}."""
    app = request.app
    require_token(request, app[settings_key].token)
    query = await read_message(request, MissingQuery, limit=64 * 1024 * 1024)
    result = await asyncio.to_thread(missing_blocks, app[store_key], app[catalogue_key], query.block_ids)
    return message_response(MissingAnswer(result))


async def upload_block(request: web.Request) -> web.Response:
    """PUT /v1/blocks/{block_id} with the block as body and `X-Block-Blake3: <hex>`."""
    app = request.app
    settings = app[settings_key]
    require_token(request, settings.token)
    block_id = validate_block_id(request.match_info["block_id"])
    blake3 = validate_blake3(request.headers.get(BLAKE3_HEADER, ""))
    size = request.content_length
    if size is None:
        raise BadInput("a block upload needs a Content-Length")
    if size <= 0 or size > settings.max_block_size:
        raise BadInput(f"block of {size} bytes: blocks must be 1..{settings.max_block_size} bytes")
    store, catalogue = app[store_key], app[catalogue_key]
    ref = BlockRef(block_id, blake3, size)
    await asyncio.to_thread(check_no_collision, catalogue, ref)
    if store.has(block_id):
        await asyncio.to_thread(catalogue.record_block, block_id, blake3, size)
        return message_response(UploadAnswer(block_id, stored=False))
    writer = await asyncio.to_thread(store.writer, block_id, blake3=blake3, expected_size=size)
    try:
        received = 0
        while received < size:
            chunk = await request.content.read(min(_READ_BYTES, size - received))
            if not chunk:
                raise BlockCorrupt(f"block {block_id}: body ended after {received} of {size} bytes")
            received += len(chunk)
            await asyncio.to_thread(writer.write, chunk)
        created = await asyncio.to_thread(writer.commit)
    finally:
        writer.abort()
    await asyncio.to_thread(catalogue.record_block, block_id, blake3, size)
    return message_response(UploadAnswer(block_id, stored=created), status=201 if created else 200)


async def publish(request: web.Request) -> web.Response:
    """POST /v1/models/{name}/revisions?tag=main with a manifest as body."""
    app = request.app
    require_token(request, app[settings_key].token)
    manifest = ModelManifest.from_bytes(await read_body(request, limit=MAX_MANIFEST_BYTES))
    if manifest.name != request.match_info["name"]:
        raise ManifestInvalid(
            f"manifest names model {manifest.name!r} but was posted to {request.match_info['name']!r}"
        )
    tag = request.query.get("tag", "main")
    store, catalogue = app[store_key], app[catalogue_key]
    result = await asyncio.to_thread(catalogue.publish, manifest, tag=tag, is_stored=store.has)
    answer = PublishAnswer(
        result.name, result.revision, result.tag, result.total_bytes, result.unique_bytes, result.created
    )
    return message_response(answer, status=201 if result.created else 200)


async def sharing(request: web.Request) -> web.Response:
    """GET /v1/models/{name}/revisions/{revision}/sharing → {"shared_with": {model: bytes}}."""
    catalogue = request.app[catalogue_key]
    name = validate_model_name(request.match_info["name"])
    revision = validate_revision(request.match_info["revision"])
    commit = await asyncio.to_thread(catalogue.resolve_commit, name, revision)
    shared = await asyncio.to_thread(catalogue.shared_bytes, commit)
    return message_response(SharingAnswer(commit, shared))


async def add_placement_run(request: web.Request) -> web.Response:
    """POST /v1/placement-runs with a run as body → {"id": ...}."""
    app = request.app
    require_token(request, app[settings_key].token)
    raw = await read_body(request, limit=MAX_PLACEMENT_RUN_BYTES)
    # The fields the catalogue indexes are checked; the document is stored as the controller wrote it.
    run = decode_json(raw, PlacementRunBody, what="placement run")
    doc = await asyncio.to_thread(json.loads, raw)
    run_id = await asyncio.to_thread(app[catalogue_key].add_placement_run, run.solver, run.hit_ratio, doc)
    return message_response(StoredRun(run_id), status=201)


async def list_placement_runs(request: web.Request) -> web.Response:
    """GET /v1/placement-runs?limit=N → {"runs": [{id, solver, created_at, hit_ratio, summary}]}."""
    limit = query_int(request, "limit", default=20, low=1, high=MAX_PLACEMENT_RUNS_LISTED)
    rows = await asyncio.to_thread(request.app[catalogue_key].placement_runs, limit=limit)
    return message_response(
        PlacementRunList([PlacementRun(r.id, r.solver, r.created_at, r.hit_ratio, r.summary) for r in rows])
    )
