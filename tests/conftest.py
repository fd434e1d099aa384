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


@pytest.fixture
def edge_factory(
    tmp_path: Path, aiohttp_server: Callable[..., "AsyncIterator[TestServer]"]
) -> Callable[..., "AsyncIterator[TestServer]"]:
    """Start edge nodes (real servers on loopback) with the given settings overrides."""
    from cachenet.edge.app import create_app as create_edge_app
    from cachenet.edge.config import EdgeSettings

    counter = iter(range(1, 1000))

    async def start(*, origin: TestServer, **overrides: object) -> TestServer:
        n = next(counter)
        node_id = str(overrides.pop("node_id", f"edge-{n}"))
        data_dir = overrides.pop("data_dir", tmp_path / node_id)
        settings = EdgeSettings(
            node_id=node_id,
            data_dir=data_dir,  # type: ignore[arg-type]
            origin_url=str(origin.make_url("")).rstrip("/"),
            token=OPERATOR_TOKEN,
            fsync=False,
            **overrides,  # type: ignore[arg-type]
        )
        return await aiohttp_server(create_edge_app(settings))  # type: ignore[misc, no-any-return]

    return start  # type: ignore[return-value]


def metric(server: TestServer, name: str, **labels: str) -> float:
    """The value of a Prometheus sample of a running server's app (0 when absent)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cachenet.edge.keys import cache_key

    text = generate_latest(server.app[cache_key].metrics.registry).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
