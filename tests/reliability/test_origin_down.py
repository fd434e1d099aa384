"""The origin goes away: edge nodes keep serving what they hold, refuse the rest clearly, and recover."""

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from registry.app import create_app
from registry.config import OriginSettings
from registry.publish import HttpTarget, publish_path
from tests.conftest import OPERATOR_TOKEN
from tests.modelgen import REAL_MODEL_NAME, make_lora_adapter, real_model_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status, await resp.read()


async def test_edge_serves_held_models_without_the_origin_and_recovers(
    aiohttp_server: Callable[..., Any], edge_factory: Callable[..., Any], tmp_path: Path
) -> None:
    port = _free_port()
    settings = OriginSettings(data_dir=tmp_path / "origin", token=OPERATOR_TOKEN, fsync=False)
    origin: TestServer = await aiohttp_server(create_app(settings), port=port)
    target = HttpTarget(str(origin.make_url("")).rstrip("/"), OPERATOR_TOKEN)
    await publish_path(real_model_dir(), name=REAL_MODEL_NAME, target=target, progress=False)
    await publish_path(
        make_lora_adapter(tmp_path / "l", seed=1), name="org/lora", target=target, base=REAL_MODEL_NAME, progress=False
    )
    await target.close()
    edge = await edge_factory(origin=origin, capacity_bytes=1 << 30, manifest_ttl_s=0.0)
    base = str(edge.make_url("")).rstrip("/")
    status, held = await _get(f"{base}/{REAL_MODEL_NAME}/resolve/main/config.json")
    assert status == 200

    await origin.close()
    status, body = await _get(f"{base}/{REAL_MODEL_NAME}/resolve/main/config.json")
    assert (status, body) == (200, held)  # the tag resolves to the last known commit
    status, body = await _get(f"{base}/org/lora/resolve/main/adapter_config.json")
    assert status == 503 and b"unreachable" in body

    again: TestServer = await aiohttp_server(create_app(settings), port=port)
    assert again.port == port
    status, _ = await _get(f"{base}/org/lora/resolve/main/adapter_config.json")
    assert status == 200
