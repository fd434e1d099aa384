"""Hostile HTTP against real servers: path traversal, oversized bodies and headers (issue #9).

Traversal attempts are sent with the raw (already encoded) path, so that neither the client
nor yarl normalises `..` away before the server sees it. Oversized bodies are announced by
`Content-Length` and never sent: the answer must come before the server waits for them.
"""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from placement.app import create_app as create_controller_app
from placement.config import ControllerSettings
from registry.keys import settings_key as origin_settings_key
from tests.conftest import OPERATOR_TOKEN

TOPOLOGY: Final = Path(__file__).parents[2] / "deploy" / "topologies" / "demo.yaml"
SENTINEL: Final = "cachenet-secret-sentinel-7d1f"
AUTH: Final = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
TRAVERSALS: Final = (
    "/v1/models/..%2F..%2Fsecret/revisions/main",
    "/v1/models/org/..%2F..%2Fsecret/revisions/main",
    "/v1/models/org/m/revisions/..%2F..%2Fsecret",
    "/v1/models/org/m/revisions/main/files/..%2F..%2F..%2Fsecret.txt",
    "/v1/models/org/m/revisions/main/files/%2Fetc%2Fpasswd",
    "/v1/models/org/m/revisions/main/files/a%5C..%5C..%5Csecret.txt",
    "/v1/blocks/..%2F..%2Fsecret.txt",
    "/v1/blocks/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/blocks/" + "0" * 32 + "%0A",
    "/org/m/resolve/main/..%2F..%2F..%2Fsecret.txt",
    "/org/m/resolve/..%2F..%2Fsecret.txt/x",
    "/org/m/resolve/main/../../../secret.txt",
    "/api/models/org/m/tree/main/..%2F..%2F..",
    "/api/models/..%2F..%2Fetc/tree/main",
    "/v1/models/org/m/revisions/main/sharing/..%2F..%2Fsecret.txt",
)


def _url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def _raw_request(
    server: TestServer, head: str, body: bytes = b"", *, timeout_s: float = 10.0
) -> tuple[int, bytes]:
    """Send a hand-written request; return the status and whatever the server sent back."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        rest = await asyncio.wait_for(reader.read(64 * 1024), timeout_s)
        return int(status_line.split()[1]), rest
    finally:
        writer.close()


@pytest.fixture
async def servers(
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
) -> dict[str, TestServer]:
    # A secret next to (and above) each data folder: a traversal that works would serve it.
    for folder in (tmp_path, tmp_path / "origin"):
        (folder / "secret.txt").write_text(SENTINEL)
    edge = await edge_factory(origin=origin_server, capacity_bytes=1 << 20)
    controller = await aiohttp_server(
        create_controller_app(
            ControllerSettings(
                topology=TOPOLOGY,
                origin_url=_url(origin_server),
                data_dir=tmp_path / "controller",
                token=OPERATOR_TOKEN,
                nodes=(f"edge-1={_url(edge)}",),
            )
        )
    )
    return {"origin": origin_server, "edge": edge, "controller": controller}


async def test_path_traversal_in_names_ids_and_paths_is_refused(
    servers: dict[str, TestServer],
) -> None:
    async with aiohttp.ClientSession() as s:
        for name in ("origin", "edge"):
            for path in TRAVERSALS:
                async with s.get(URL(_url(servers[name]) + path, encoded=True)) as resp:
                    body = await resp.read()
                    assert resp.status in (404, 422), (name, path, resp.status, body[:200])
                    assert SENTINEL.encode() not in body and b"root:" not in body, (name, path)
        controller = _url(servers["controller"])
        for path in (
            "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/static/..%2Fservice.py",
            "/static/../service.py",
            "/static/%2E%2E/%2E%2E/secret.txt",
        ):
            async with s.get(URL(controller + path, encoded=True)) as resp:
                body = await resp.read()
                assert resp.status in (403, 404), (path, resp.status)
                assert b"root:" not in body and b"create_app" not in body and SENTINEL.encode() not in body


@pytest.mark.parametrize(
    "server_name, method, path",
    [
        ("origin", "PUT", "/v1/blocks/" + "0" * 32),
        ("origin", "POST", "/v1/models/org/m/revisions"),
        ("origin", "POST", "/v1/blocks/missing"),
        ("origin", "POST", "/v1/placement-runs"),
        ("edge", "PUT", "/v1/node/plan"),
    ],
)
async def test_oversized_bodies_are_refused_before_they_are_read(
    servers: dict[str, TestServer], server_name: str, method: str, path: str
) -> None:
    # 1 TiB announced, 16 bytes sent: only a refusal from the headers alone can answer in time.
    head = (
        f"{method} {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {OPERATOR_TOKEN}\n"
        f"X-Block-Blake3: {'0' * 64}\nContent-Type: application/json\nContent-Length: {1 << 40}\n"
    )
    status, rest = await _raw_request(servers[server_name], head, b"{" * 16)
    assert status == 422, (status, rest[:300])
    assert b"BadInput" in rest


async def test_an_upload_over_the_max_block_size_is_refused(origin_server: TestServer) -> None:
    max_block = origin_server.app[origin_settings_key].max_block_size
    head = (
        f"PUT /v1/blocks/{'0' * 32} HTTP/1.1\nHost: x\nAuthorization: Bearer {OPERATOR_TOKEN}\n"
        f"X-Block-Blake3: {'0' * 64}\nContent-Length: {max_block + 1}\n"
    )
    status, rest = await _raw_request(origin_server, head, b"\0" * 1024)
    assert status == 422, rest[:300]


async def test_a_chunked_json_body_over_the_cap_is_refused(origin_server: TestServer) -> None:
    limit = 16 * 1024 * 1024  # registry.routes.MAX_PLACEMENT_RUN_BYTES

    async def chunks() -> Any:
        piece = b" " * (1024 * 1024)
        for _ in range(limit // len(piece) + 2):
            yield piece

    async with (
        aiohttp.ClientSession(headers=AUTH) as s,
        s.post(
            _url(origin_server) + "/v1/placement-runs",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 422, await resp.text()


@pytest.mark.parametrize(
    "body",
    [
        # RecursionError in json.loads: was a 500
        b"[" * 100_000 + b"]" * 100_000,
        # Over Python's int digit limit: a ValueError that is not a JSONDecodeError, was a 500
        b"1" * 5000,
        # A lone surrogate cannot be encoded as UTF-8 when the revision is computed: was a 500
        b'{"format": "cachenet.manifest/1", "name": "org/m", "files": [], "metadata": {"x": "\\ud800"}}',
        b"7.5",
    ],
    ids=["deep-nesting", "huge-int", "lone-surrogate", "number"],
)
async def test_hostile_json_bodies_get_422_not_500(servers: dict[str, TestServer], body: bytes) -> None:
    routes = [
        ("origin", "POST", "/v1/models/org/m/revisions"),
        ("origin", "POST", "/v1/blocks/missing"),
        ("origin", "POST", "/v1/placement-runs"),
        ("edge", "PUT", "/v1/node/plan"),
        ("controller", "POST", "/v1/placement/recompute"),
    ]
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for name, method, path in routes:
            if name == "controller" and body.startswith(b"{"):
                continue  # any JSON object is a valid recompute request (unknown keys are ignored)
            async with s.request(
                method,
                _url(servers[name]) + path,
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 422, (name, path, resp.status, await resp.text())
                assert (await resp.json())["error"] in ("BadInput", "ManifestInvalid")


async def test_huge_headers_and_request_lines_are_refused_by_the_parser(
    servers: dict[str, TestServer],
) -> None:
    for server in servers.values():
        status, _ = await _raw_request(server, f"GET /v1/models HTTP/1.1\nHost: x\nX-Big: {'a' * 100_000}\n")
        assert status in (400, 431)
        status, _ = await _raw_request(server, f"GET /v1/{'a' * 100_000} HTTP/1.1\nHost: x\n")
        assert status in (400, 414)
        many = "".join(f"X-H{i}: v\n" for i in range(5000))
        status, _ = await _raw_request(server, f"GET /healthz HTTP/1.1\nHost: x\n{many}")
        assert status in (200, 400, 431)  # aiohttp bounds the header count only by total size


async def test_a_device_cannot_reach_operator_routes_with_a_forged_token(
    servers: dict[str, TestServer],
) -> None:
    async with aiohttp.ClientSession() as s:
        for token in (
            OPERATOR_TOKEN + "x",
            OPERATOR_TOKEN[:-1],
            OPERATOR_TOKEN.upper(),
            f" {OPERATOR_TOKEN}x",
        ):
            async with s.put(
                _url(servers["edge"]) + "/v1/node/plan",
                data=json.dumps({"blocks": []}),
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                assert resp.status == 401
