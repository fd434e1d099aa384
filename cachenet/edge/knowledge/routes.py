"""Routes of the edge node's knowledge cache: describe a collection, answer a query."""

from collections.abc import AsyncIterator

from aiohttp import web

from cachenet.edge.keys import cache_key, demand_key, edge_knowledge_key, manifests_key
from cachenet.edge.knowledge.shards import EdgeKnowledge
from cachenet.knowledge.formats import describe
from cachenet.knowledge.search import MAX_QUERY_BODY_BYTES
from cachenet.names import parse_cell
from cachenet.protocol.headers import CELL_HEADER
from cachenet.protocol.knowledge import AnswerInfo, CollectionInfo, QueryBody
from cachenet.protocol.patterns import ROUTE_COLLECTION
from cachenet.server.httpbody import message_response, read_body
from cachenet.server.openapi import ApiDoc

__all__ = ("add_knowledge_routes",)


def add_knowledge_routes(app: web.Application, doc: ApiDoc) -> None:
    """Register /v1/knowledge/{collection}[/query] on the edge app (after its cache is set)."""
    knowledge = EdgeKnowledge(app[cache_key], app[manifests_key], app[demand_key])
    app[edge_knowledge_key] = knowledge
    collection = f"{{collection:{ROUTE_COLLECTION}}}"
    doc.route(
        app.router,
        "GET",
        f"/v1/knowledge/{collection}",
        _describe,
        summary="A collection's index and which of its shards this node holds",
        query={"revision": {"type": "string"}},
        schema=CollectionInfo,
    )
    doc.route(
        app.router,
        "POST",
        f"/v1/knowledge/{collection}/query",
        _query,
        summary="Top-k chunks: answered from held shards, after fetching shards, or forwarded",
        body=QueryBody,
        schema=AnswerInfo,
    )

    async def stop(app: web.Application) -> AsyncIterator[None]:
        yield
        await knowledge.close()

    app.cleanup_ctx.append(stop)


async def _describe(request: web.Request) -> web.Response:
    knowledge = request.app[edge_knowledge_key]
    manifest, index = await knowledge.collection(
        request.match_info["collection"], request.query.get("revision", "main")
    )
    return message_response(describe(manifest, index, held=knowledge.held_shards(index)))


async def _query(request: web.Request) -> web.Response:
    knowledge = request.app[edge_knowledge_key]
    async with knowledge.gate.slot():  # a bounded queue: 503 + Retry-After beyond it
        body = await read_body(request, limit=MAX_QUERY_BODY_BYTES)
        answer = await knowledge.answer(
            request.match_info["collection"], body, cell=parse_cell(request.headers.get(CELL_HEADER))
        )
    return message_response(answer)
