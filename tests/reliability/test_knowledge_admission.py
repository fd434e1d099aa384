"""Class 5 of issue 14: expensive knowledge queries go through admission control.

Concurrent text queries (model load + embedding on the node) had no bound: they queued
without limit in the pool that also serves blocks, and block serving slowed to seconds.
Now at most `knowledge_concurrency` run and `knowledge_queue` wait; the rest are refused at
once with 503 and Retry-After, and the heavy steps run in threads of their own.
"""

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.knowledge.conftest import (  # noqa: F401 - fixtures
    COLLECTION,
    corpus_docs,
    embedder,
    ingested,
    knowledge_origin,
    seeded_origin_data,
    url_of,
)


@pytest.mark.timeout(240)
async def test_concurrent_queries_beyond_the_queue_get_503_with_retry_after(
    knowledge_origin: TestServer,  # noqa: F811
    edge_factory: Callable[..., Any],
) -> None:
    edge = await edge_factory(
        origin=knowledge_origin, capacity_bytes=1 << 30, knowledge_concurrency=1, knowledge_queue=1
    )
    url = f"{url_of(edge)}/v1/knowledge/{COLLECTION}/query"

    async def ask(s: aiohttp.ClientSession, k: int) -> tuple[int, str | None]:
        async with s.post(url, json={"text": f"how do edge caches place model blocks {k}", "k": 3}) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        answers = await asyncio.gather(*(ask(s, k) for k in range(12)))
        statuses = sorted(status for status, _ in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(503) >= 1, statuses
        assert statuses.count(200) >= 2, statuses
        assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 503)
        # Once the burst is over, queries are served again.
        assert (await ask(s, 99))[0] == 200
