"""The controller's block -> nodes lookup table, built from what the nodes say they hold (issue #22).

Each node keeps a numbered log of the blocks entering and leaving its store
(`GET /v1/node/holdings?epoch=E&since=N`); the controller reads the changes since the last
number it saw (everything, when the node restarted or it fell too far behind). So a block id
resolves to the nodes that can serve it now, never to a node that was only told to hold it.
"""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from cachenet.httpclient import raise_for_status
from cachenet.protocol.codec import decode_json
from cachenet.protocol.delivery import HoldingsAnswer

__all__ = ("HoldingsTable", "NodeHoldings")
log = logging.getLogger(__name__)

_TIMEOUT: Final = aiohttp.ClientTimeout(total=10, connect=2)


@dataclass
class NodeHoldings:
    """What one node reported: the blocks it holds and fetches, as of (epoch, seq)."""

    epoch: str | None = None
    seq: int | None = None
    held: set[str] = field(default_factory=set)
    fetching: set[str] = field(default_factory=set)
    synced: bool = False


class HoldingsTable:
    """Holdings of every node, refreshed incrementally; the lookup table is derived from them."""

    def __init__(self, node_urls: Mapping[str, str]) -> None:
        self.node_urls = dict(node_urls)
        self.nodes: dict[str, NodeHoldings] = {s: NodeHoldings() for s in node_urls}

    async def refresh(self, session: aiohttp.ClientSession, servers: list[str] | None = None) -> None:
        """Read the changes of `servers` (default all) since their last report; a node down is listed for nothing."""
        targets = [s for s in (servers if servers is not None else list(self.node_urls)) if s in self.node_urls]
        await asyncio.gather(*(self._refresh_one(session, s) for s in targets))

    def held(self, server: str) -> set[str] | None:
        """The blocks `server` holds (None when it never answered)."""
        node = self.nodes.get(server)
        return node.held if node is not None and node.synced else None

    def lookup(self) -> dict[str, list[str]]:
        """block id -> URLs of the nodes that hold it."""
        table: dict[str, list[str]] = {}
        for server, node in self.nodes.items():
            url = self.node_urls[server]
            for block_id in node.held:
                table.setdefault(block_id, []).append(url)
        return table

    def fetching(self) -> dict[str, list[str]]:
        """block id -> URLs of the nodes fetching it now."""
        table: dict[str, list[str]] = {}
        for server, node in self.nodes.items():
            for block_id in node.fetching:
                table.setdefault(block_id, []).append(self.node_urls[server])
        return table

    async def _refresh_one(self, session: aiohttp.ClientSession, server: str) -> None:
        node = self.nodes[server]
        params = {"epoch": node.epoch, "since": str(node.seq)} if node.epoch and node.seq is not None else {}
        try:
            async with session.get(
                f"{self.node_urls[server]}/v1/node/holdings", params=params, timeout=_TIMEOUT
            ) as resp:
                await raise_for_status(resp)
                raw = await resp.read()
            answer = await asyncio.to_thread(decode_json, raw, HoldingsAnswer, what="holdings")
        except Exception as e:  # a node that does not answer can serve nothing: it holds nothing now
            log.debug("holdings of %s not refreshed: %r", server, e)
            self.nodes[server] = NodeHoldings()
            return
        if answer.full:
            node.held = set(answer.added)
        else:
            node.held.difference_update(answer.removed)
            node.held.update(answer.added)
        node.epoch, node.seq, node.synced = answer.epoch, answer.seq, True
        node.fetching = set(answer.fetching)
