"""Multicast-aware fetching: shared blocks from a node's multicast session, the rest by unicast.

The device asks the first source that announces multicast (`GET /v1/multicast`) to plan
its missing blocks (`POST /v1/multicast/join`). The node batches the devices that ask
within a short window and answers each with its share: blocks its session sends by
multicast, blocks sent before a late joiner arrived (fetched by repair), and blocks for
unicast. The device joins the session's group and receives pieces into partial blocks
while the unicast blocks stream in through the ordinary fetcher. When the main pass ends
(END datagram, or the node's session state) it reports the pieces it lacks (NACK); the
node sends pieces that several members lack once more by multicast, and after the final
END the pieces still missing are fetched by HTTP Range from the node (unicast repair,
marked with `X-Cachenet-Repair`). Every block is verified against its id and
BLAKE3 before it is committed; one that does not verify is fetched whole by unicast.

Modes: `off` never asks; `auto` asks when a source announces multicast and falls back
to unicast whenever multicast cannot be had (no node offers it, the group cannot be
joined, the node plans unicast); `on` fails instead of falling back.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from cachenet.errors import BadInput, CachenetError
from cachenet.httpclient import raise_for_status
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.multicast.sockets import validate_group
from clients.fetch import BlockFetcher
from clients.multicast.options import MULTICAST_MODES, MulticastOptions, MulticastStats, Progress
from clients.multicast.run import SessionRun, fall_back, unicast_only

__all__ = ("MULTICAST_MODES", "MulticastOptions", "MulticastStats", "fetch_with_multicast")
log = logging.getLogger(__name__)

_ANNOUNCE_TIMEOUT_S: Final = 3.0


async def fetch_with_multicast(
    refs: Sequence[BlockRef],
    *,
    manifest: ModelManifest,
    fetcher: BlockFetcher,
    options: MulticastOptions,
    progress: Progress | None = None,
) -> MulticastStats:
    """Store every block of `refs`, using a node's multicast session where one covers them.

    Raises what `BlockFetcher.ensure` raises, and `UpstreamUnavailable` in mode `on` when
    no multicast could be had.
    """
    if options.mode == "off" or not refs:
        await fetcher.ensure(refs)
        return unicast_only(None, "off" if options.mode == "off" else "nothing to fetch")
    node, announcement = await _find_node(fetcher, options)
    if node is None:
        return await fall_back(fetcher, refs, options, None, "no source announces multicast")
    try:
        answer = await _join(fetcher, node, manifest, refs, options)
    except (aiohttp.ClientError, TimeoutError, OSError, CachenetError, ValueError) as e:
        return await fall_back(fetcher, refs, options, node, f"join failed: {e}")
    if answer["session"] is None:
        await fetcher.ensure(refs)
        return unicast_only(node, "the node planned unicast (no other device shares these blocks now)")
    run = SessionRun(fetcher, node, answer, refs, options, progress, announcement)
    return await run.run()


async def _find_node(fetcher: BlockFetcher, options: MulticastOptions) -> tuple[str | None, dict[str, Any]]:
    """The first source (in the order given) that announces multicast, with its announcement."""
    session = fetcher.pool.session

    async def ask(url: str) -> dict[str, Any] | None:
        try:
            async with session.get(
                f"{url}/v1/multicast", timeout=aiohttp.ClientTimeout(total=_ANNOUNCE_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json()
                return doc if isinstance(doc, dict) and doc.get("enabled") is True else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    urls = [s.url for s in fetcher.pool.sources]
    for url, doc in zip(urls, await asyncio.gather(*(ask(u) for u in urls)), strict=True):
        if doc is not None:
            return url, doc
    return None, {}


async def _join(
    fetcher: BlockFetcher, node: str, manifest: ModelManifest, refs: Sequence[BlockRef], options: MulticastOptions
) -> dict[str, Any]:
    body = {
        "model": manifest.name,
        "revision": manifest.revision,
        "blocks": [r.block_id for r in refs],
        "rate": options.rate,
    }
    async with fetcher.pool.session.post(
        f"{node}/v1/multicast/join", json=body, timeout=aiohttp.ClientTimeout(total=options.join_timeout_s)
    ) as resp:
        await raise_for_status(resp)
        answer: dict[str, Any] = await resp.json()
    wanted = {r.block_id for r in refs}
    try:
        seqs = answer["multicast_seq"]
        if len(seqs) != len(answer["multicast"]) or not all(type(x) is int and x >= 0 for x in seqs):
            raise ValueError("the join answer's multicast_seq does not match its multicast blocks")
        listed = [*answer["multicast"], *answer["repair"], *answer["unicast"]]
        if len(listed) != len(set(listed)):
            raise ValueError("the join answer names a block twice")
        for key in ("multicast", "repair", "unicast"):
            if not isinstance(answer[key], list) or not set(answer[key]) <= wanted:
                raise ValueError(f"the join answer's {key!r} names blocks this device did not ask for")
        if set(answer["multicast"]) | set(answer["repair"]) | set(answer["unicast"]) != wanted:
            raise ValueError("the join answer does not account for every block asked for")
        if answer["session"] is not None:
            s = answer["session"]
            validate_group(str(s["group"]))
            bytes.fromhex(s["session"])
            if not (1 <= int(s["port"]) <= 65535 and 512 <= int(s["piece_bytes"]) <= 65000):
                raise ValueError("bad port or piece size")
            bytes.fromhex(answer["member"])
    except (KeyError, TypeError, BadInput) as e:
        raise ValueError(f"malformed join answer from {node}: {e}") from None
    return answer
