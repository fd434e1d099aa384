"""OpenAPI 3.1 documents built from the routes as they are registered."""

import re
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ("ApiDoc", "error_schema")

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
        body: dict[str, Any] | None = None,
        responses: dict[int, str] | None = None,
        content: str = "application/json",
    ) -> None:
        """Register `handler` on `router` and describe it."""
        router.add_route(method, path, handler)
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM_RE.findall(path)
        ]
        for name, schema in (query or {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
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
                resp_doc[code]["content"] = {content: {}}
        for code, text in ((401, "missing or wrong operator token"),) if operator else ():
            resp_doc.setdefault(str(code), {"description": text})
        for code, text in ((404, "not found"), (422, "invalid input")):
            resp_doc.setdefault(
                str(code), {"description": text, "content": {"application/json": {"schema": error_schema()}}}
            )
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
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        }

    def operator_routes(self) -> list[tuple[str, str]]:
        """(method, path) of every route that needs the operator token."""
        return [
            (method.upper(), path)
            for path, ops in self.paths.items()
            for method, op in ops.items()
            if op.get("security")
        ]

    async def handle(self, request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(self.document())
