"""The multicast routes refuse bad input with clear errors and change nothing."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cachenet.edge.multicast.routes import hub_key
from registry.keys import catalogue_key
from tests.clients.support import publish, url_of
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir


@pytest.fixture
async def edge(origin_server: TestServer, edge_factory: Callable[..., Any], tmp_path: Path) -> TestServer:
    await publish(origin_server, real_model_dir(), REAL_MODEL_NAME)
    await publish(origin_server, make_lora_adapter(tmp_path / "lora", seed=1), "org/lora", base=REAL_MODEL_NAME)
    return await edge_factory(origin=origin_server, multicast_window_s=0.01)  # type: ignore[no-any-return]


async def _post(url: str, body: object) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_the_announcement_names_the_group(edge: TestServer) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{url_of(edge)}/v1/multicast") as resp:
        doc = await resp.json()
    assert (
        doc["enabled"] is True and doc["group"] == "239.255.77.1" and doc["port"] == 8710
    )  # the HTTP port setting, over UDP
    assert doc["interface"] == "127.0.0.1" and doc["piece_bytes"] == 16384


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("not an object", 422, "`object`"),
        ({"blocks": []}, 422, "`model`"),
        ({"model": "../etc", "blocks": []}, 422, "name"),
        ({"model": "org/lora", "blocks": []}, 422, "at least one block"),
        ({"model": "org/lora", "blocks": ["0" * 32]}, 422, "not part of"),
        ({"model": "org/lora", "blocks": ["../../x"]}, 422, "$.blocks[0]"),
        ({"model": "org/lora", "blocks": "abc"}, 422, "$.blocks"),
        ({"model": "org/lora", "revision": 7, "blocks": ["0" * 32]}, 422, "$.revision"),
        ({"model": "org/lora", "blocks": ["0" * 32], "rate": -1}, 422, "rate"),
        ({"model": "org/lora", "blocks": ["0" * 32], "rate": True}, 422, "rate"),
        ({"model": "org/none", "blocks": ["0" * 32]}, 404, "none"),
    ],
)
async def test_bad_joins_are_refused(edge: TestServer, body: object, status: int, words: str) -> None:
    got, doc = await _post(f"{url_of(edge)}/v1/multicast/join", body)
    assert got == status and words in doc["message"], doc
    assert not edge.app[hub_key].sessions


async def test_sessions_and_members_are_validated(edge: TestServer, origin_server: TestServer) -> None:
    base = url_of(edge)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/v1/multicast/sessions/{'a' * 16}") as resp:
            assert resp.status == 404
        async with s.get(f"{base}/v1/multicast/sessions/..%2F..") as resp:
            assert resp.status in (404, 422)
    block = next(iter(origin_server.app[catalogue_key].manifest("org/lora").unique_blocks()))
    status, answer = await _post(f"{base}/v1/multicast/join", {"model": "org/lora", "blocks": [block]})
    assert status == 200 and answer["session"] is None and answer["unicast"] == [block]
    status, doc = await _post(f"{base}/v1/multicast/sessions/{'b' * 16}/leave", {"member": "c" * 16})
    assert status == 404
    status, doc = await _post(f"{base}/v1/multicast/sessions/{'b' * 16}/leave", {"member": "../x"})
    assert status == 422
    status, doc = await _post(f"{base}/v1/multicast/sessions/{'b' * 16}/nack", {"member": "c" * 16, "missing": []})
    assert status == 404
    # An unknown session is refused before its body is even read (issue 14: no work for junk).
    status, doc = await _post(f"{base}/v1/multicast/sessions/{'b' * 16}/nack", {"member": "c" * 16, "missing": [5]})
    assert status == 404


@pytest.mark.parametrize(
    ("missing", "words"),
    [
        ([[99, 0, 1]], "not in this session"),
        ([[0, 0, 10**9]], "outside"),
        ([[0, 3, 3]], "outside"),
        ([[0, 0]], "$.missing[0]"),
        ([[0, "a", 1]], "$.missing[0][1]"),
        ([[0, -1, 1]], "outside"),
    ],
)
async def test_nacks_are_validated_against_the_session(
    edge: TestServer,
    origin_server: TestServer,
    edge_factory: Callable[..., Any],
    missing: list[list[object]],
    words: str,
) -> None:
    edge = await edge_factory(origin=origin_server, multicast_window_s=0.3)  # both joins in one batch
    hub = edge.app[hub_key]
    manifest = origin_server.app[catalogue_key].manifest(REAL_MODEL_NAME)
    blocks = list(manifest.unique_blocks())[:3]
    first, second = await asyncio.gather(*(hub.join("org/lora", "main", blocks, None) for _ in range(2)))
    session = first["session"]["session"]
    status, doc = await _post(
        f"{url_of(edge)}/v1/multicast/sessions/{session}/nack", {"member": first["member"], "missing": missing}
    )
    assert status == 422 and words in doc["message"], doc
    assert not hub.session(session).nack_reports
    hub.leave(session, first["member"], expected_bytes=0, missed_bytes=0)
    hub.leave(session, second["member"], expected_bytes=0, missed_bytes=0)


async def test_a_node_without_multicast_says_so(origin_server: TestServer, edge_factory: Callable[..., Any]) -> None:
    edge = await edge_factory(origin=origin_server, multicast_group=None)
    async with aiohttp.ClientSession() as s, s.get(f"{url_of(edge)}/v1/multicast") as resp:
        assert await resp.json() == {"enabled": False}
    status, doc = await _post(f"{url_of(edge)}/v1/multicast/join", {"model": "org/x", "blocks": ["0" * 32]})
    assert status == 404 and "multicast is off" in doc["message"]
