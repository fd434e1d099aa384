"""Source selection by throughput, connection limits, back-off, and manifest resolution."""

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cachenet.errors import BadInput, ModelNotFound, UpstreamUnavailable
from clients.config import PullSettings
from clients.sources import NoSourceLeft, SourcePool
from tests.clients.support import free_port, publish, url_of
from tests.modelgen import make_lora_adapter


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_blocks_go_to_the_source_that_would_finish_them_first() -> None:
    clock = ManualClock()
    pool = SourcePool(["http://a", "http://b"], settings=PullSettings(per_source_connections=16), clock=clock)
    fast, slow = pool.sources
    fast.note_bytes(0, 0.0)
    slow.note_bytes(0, 0.0)
    clock.now = 1.0
    fast.note_bytes(90_000_000, clock.now)  # measured: 90 MB/s and 10 MB/s
    slow.note_bytes(10_000_000, clock.now)
    assert (fast.rate, slow.rate) == (90e6, 10e6)
    picks = [(await pool.acquire(10_000_000, set())).url for _ in range(10)]
    # work is spread in proportion to throughput: ~9 blocks to the fast one, ~1 to the slow one
    assert picks.count("http://a") == 9 and picks.count("http://b") == 1
    with pytest.raises(NoSourceLeft):
        await pool.acquire(1, {"http://a", "http://b"})


async def test_a_full_source_is_waited_for_and_a_failed_one_backs_off() -> None:
    clock = ManualClock()
    settings = PullSettings(per_source_connections=1, backoff_s=1.0)
    pool = SourcePool(["http://a", "http://b"], settings=settings, clock=clock)
    a = await pool.acquire(100, set())
    b = await pool.acquire(100, set())
    assert (a.url, b.url) == ("http://a", "http://b")
    waiting = asyncio.create_task(pool.acquire(100, set()))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # both sources are at their connection limit
    pool.failed(b, ConnectionResetError("gone"), transport=True)
    await pool.release(b, unused=100)
    await pool.release(a, unused=100)
    assert (await waiting).url == "http://a"  # b is backing off
    await pool.release(a, unused=100)
    clock.now += 1.5
    assert pool.sources[1].down_until < clock.now
    assert {(await pool.acquire(1, set())).url, (await pool.acquire(1, set())).url} == {
        "http://a",
        "http://b",
    }


def test_bad_source_urls_are_refused() -> None:
    with pytest.raises(BadInput):
        SourcePool([])
    with pytest.raises(BadInput):
        SourcePool(["ftp://x"])
    with pytest.raises(BadInput):
        PullSettings(concurrency=0)


async def test_manifest_comes_from_the_first_source_that_answers(
    origin_server: TestServer, aiohttp_server: Callable[..., Any], tmp_path: Any
) -> None:
    folder = make_lora_adapter(tmp_path / "m", seed=1)
    (folder / "adapter_config.json").unlink()
    report = await publish(origin_server, folder, "org/m")

    async def impostor(request: web.Request) -> web.Response:
        # a well-formed manifest of another revision, claiming to be the requested commit
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url_of(origin_server)}/v1/models/org/m/revisions/main") as r,
        ):
            doc = await r.json()
        doc["metadata"] = {"tampered": True}
        doc.pop("revision")
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/v1/models/{org}/{name}/revisions/{rev}", impostor)
    liar = await aiohttp_server(app)
    dead = f"http://127.0.0.1:{free_port()}"
    pool = SourcePool([dead, url_of(liar), url_of(origin_server)], settings=PullSettings(connect_timeout_s=1))
    try:
        manifest = await pool.manifest("org/m", report.revision)
        assert manifest.revision == report.revision
        assert [s.errors for s in pool.sources] == [1, 1, 0]
        origin_only = SourcePool([url_of(origin_server)])
        with pytest.raises(ModelNotFound):
            await origin_only.manifest("org/none", "main")
        await origin_only.close()
        only_dead = SourcePool([dead], settings=PullSettings(connect_timeout_s=1))
        with pytest.raises(UpstreamUnavailable):
            await only_dead.manifest("org/m", "main")
        await only_dead.close()
    finally:
        await pool.close()
