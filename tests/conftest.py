"""Shared fixtures: origin settings and a running origin on a loopback port."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from registry.app import create_app
from registry.config import OriginSettings

OPERATOR_TOKEN = "test-operator-token"


@pytest.fixture
def origin_settings(tmp_path: Path) -> OriginSettings:
    """Origin settings with a data folder in tmp_path and a known token."""
    return OriginSettings(data_dir=tmp_path / "origin", token=OPERATOR_TOKEN, fsync=False)


@pytest.fixture
async def origin_server(
    origin_settings: OriginSettings, aiohttp_server: Callable[..., "AsyncIterator[TestServer]"]
) -> TestServer:
    """A real origin server on 127.0.0.1 with a kernel-chosen port."""
    return await aiohttp_server(create_app(origin_settings))  # type: ignore[misc, no-any-return]
