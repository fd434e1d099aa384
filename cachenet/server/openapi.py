"""OpenAPI 3.1 documents built from the routes as they are registered."""

import re
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from cachenet.protocol.codec import schema_components
from cachenet.protocol.patterns import BLOCK_ID, MODEL_NAME, REVISION, schema_pattern

__all__ = ("ApiDoc", "error_schema")

# What the servers accept for the path parameters every API shares.
_PATH_PARAM_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "block_id": {"type": "string", "pattern": schema_pattern(BLOCK_ID)},
    "name": {"type": "string", "pattern": schema_pattern(MODEL_NAME)},
    "revision": {"type": "string", "pattern": schema_pattern(REVISION)},
    "path": {"type": "string", "minLength": 1, "maxLength": 1024},
}
_PARAM_RE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")


def error_schema() -> dict[str, Any]:
    """Schema of the JSON error body every server returns."""
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    }


@dataclass
class ApiDoc:
    """Collects route descriptions and serves them as `/openapi.json`."""

    title: str
    version: str = "1"
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)

    def route(
        self,
        router: web.UrlDispatcher,
        method: str,
        path: str,
        handler: Handler,
        *,
        summary: str,
        operator: bool = False,
        query: dict[str, dict[str, Any]] | None = None,
        body: dict[str, Any] | type | Any | None = None,
        responses: dict[int, str] | None = None,
        content: str = "application/json",
        schema: dict[str, Any] | type | Any | None = None,
        errors: dict[int, str] | None = None,
    ) -> None:
        """Register `handler` on `router` and describe it.

        `schema` describes the JSON body of the 2xx responses and `body` the request body:
        either a message type (a msgspec Struct, or a list of them: its schema is generated
        and its parts become shared components) or, for non-JSON content, a hand-written
        OpenAPI content map. Every route also documents the error statuses it can answer
        (`errors` adds route-specific ones) with the JSON error body.
        """
        if body is not None and not isinstance(body, dict):
            body = {"application/json": {"schema": self._schema_of(body)}}
        if schema is not None and not isinstance(schema, dict):
            schema = self._schema_of(schema)
        router.add_route(method, path, handler)
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _PATH_PARAM_SCHEMAS.get(name, {"type": "string"})}
            for name in _PARAM_RE.findall(path)
        ]
        for name, param_schema in (query or {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": param_schema})
        op: dict[str, Any] = {"summary": summary, "operationId": f"{method.lower()}_{handler.__name__}"}
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {"required": True, "content": body}
        resp_doc: dict[str, Any] = {
            str(code): {"description": text} for code, text in (responses or {200: "OK"}).items()
        }
        for code in resp_doc:
            if code.startswith("2") and content and method != "HEAD":
                media: dict[str, Any] = {"schema": schema} if schema is not None else {}
                resp_doc[code]["content"] = {content: media}
        for status, text in sorted({**_default_errors(method, operator, content), **(errors or {})}.items()):
            entry: dict[str, Any] = {"description": text}
            if method != "HEAD":  # a HEAD answer has no body to describe
                entry["content"] = {"application/json": {"schema": error_schema()}}
                if status == 400:  # aiohttp's HTTP parser answers before any handler, in plain text
                    entry["content"]["text/plain"] = {}
            resp_doc.setdefault(str(status), entry)
        op["responses"] = resp_doc
        if operator:
            op["security"] = [{"bearer": []}]
        self.paths.setdefault(_PARAM_RE.sub(r"{\1}", path), {})[method.lower()] = op

    def document(self) -> dict[str, Any]:
        """The OpenAPI document."""
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": self.paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": self.schemas,
            },
        }

    def operator_routes(self) -> list[tuple[str, str]]:
        """(method, path) of every route that needs the operator token."""
        return [
            (method.upper(), path)
            for path, ops in self.paths.items()
            for method, op in ops.items()
            if op.get("security")
        ]

    def _schema_of(self, message_type: Any) -> dict[str, Any]:
        (ref,), components = schema_components([message_type])
        self.schemas.update(components)
        return ref

    async def handle(self, request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(self.document())


def _default_errors(method: str, operator: bool, content: str) -> dict[int, str]:
    """The error statuses any route of this kind can answer (see `cachenet.errors`)."""
    out = {
        400: "malformed HTTP (e.g. a request line over 8190 bytes), refused by aiohttp's parser",
        404: "not found (unknown model, revision, file, block or route)",
        409: "integrity: bytes that do not match their hashes, or a block id collision",
        422: "invalid input (names, ids, paths, bodies, sizes)",
        503: "an upstream (origin, peer, node, controller) is unavailable",
    }
    if operator:
        out[401] = "missing or wrong operator token"
    if method in ("GET", "HEAD"):
        out[403] = "refused by a mirror rule (deny/allow patterns, file size)"
        out[504] = "an upstream hub cannot be reached for something not cached here"
    if content == "application/octet-stream" or method == "HEAD":
        out[416] = "Range selects nothing inside the resource"
    if method in ("PUT", "POST"):
        out[507] = "the store or disk is full"
    return out
