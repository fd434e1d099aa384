"""Executing a plan: each node's delivery schedule as sent, and the delivery measured against the plan.

`schedule_message` turns the controller's `DeliverySchedulePlan` into what one node is sent (its
parents per block, with the rate of each link). `track_delivery` then follows the nodes' plan
status until every node finished (or a newer plan replaced this one) and attributes the bytes
each node received from each source to the backhaul links between them: bytes per link,
planned vs measured, and the time the whole plan took.
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import networkx as nx

from cachenet.manifest import BlockRef
from cachenet.protocol.delivery import DeliverySchedule, RelaySource
from placement.delivery import DeliverySchedulePlan, path_links
from placement.relay import Link, relay_plan
from placement.topology import Topology

__all__ = ("DeliveryRecord", "backhaul_report", "schedule_message", "track_delivery")
log = logging.getLogger(__name__)

_DONE_STATES: Final = ("applied", "incomplete")
_POLL_TIMEOUT: Final = aiohttp.ClientTimeout(total=5, connect=2)
# A node that does not answer for this long is given up on (its part of the plan is undelivered).
UNREACHABLE_GIVE_UP_S: Final = 3.0


@dataclass
class DeliveryRecord:
    """One run's delivery: bytes per link planned and measured, per-node progress, completion time."""

    run_id: int
    plan_id: str
    planned: dict[Link, int]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured: dict[Link, int] = field(default_factory=dict)
    state: str = "delivering"
    time_s: float | None = None
    started: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict[str, Any]:
        """JSON for the dashboard and `GET /v1/deliveries`."""
        links = sorted(set(self.planned) | set(self.measured))
        return {
            "run_id": self.run_id,
            "plan_id": self.plan_id,
            "state": self.state,
            "time_s": self.time_s,
            "planned_bytes": sum(self.planned.values()),
            "measured_bytes": sum(self.measured.values()),
            "links": [
                {"a": a, "b": b, "planned": self.planned.get((a, b), 0), "measured": self.measured.get((a, b), 0)}
                for a, b in links
            ],
            "nodes": self.nodes,
        }


def schedule_message(
    server: str,
    plan: DeliverySchedulePlan,
    *,
    node_urls: Mapping[str, str],
    origin: str,
    run: str,
    pace: bool,
) -> DeliverySchedule:
    """What `server` is told: per block, the URLs of its parents (nearest first) and each link's rate."""
    routes: dict[str, list[int]] = {}
    sources: list[RelaySource] = []
    index: dict[str, int] = {}
    for block_id, parents in plan.parents.get(server, {}).items():
        route = []
        for parent in parents:
            url = node_urls.get(parent)
            if url is None:
                continue
            if parent not in index:
                index[parent] = len(sources)
                rate = plan.rates.get((server, parent)) if pace else None
                sources.append(RelaySource(url=url, rate=rate))
            route.append(index[parent])
        if route:
            routes[block_id] = route
    origin_rate = plan.rates.get((server, origin)) if pace else None
    return DeliverySchedule(sources=sources, routes=routes, origin_rate=origin_rate, run=run)


async def track_delivery(
    record: DeliveryRecord,
    session: aiohttp.ClientSession,
    *,
    node_urls: Mapping[str, str],
    graph: nx.Graph,
    origin: str,
    poll_s: float = 0.25,
    timeout_s: float = 3600.0,
) -> None:
    """Poll the nodes' plan status until all of them finished `record`'s plan; fill in what was measured."""
    by_url = {u.rstrip("/"): s for s, u in node_urls.items()}
    waiting = set(record.nodes)
    deadline = record.started + timeout_s
    silent_since: dict[str, float] = {}
    while waiting and time.monotonic() < deadline:
        for server in sorted(waiting):
            status = await _plan_status(session, node_urls[server])
            if status is None:
                record.nodes[server]["state"] = "unreachable"
                since = silent_since.setdefault(server, time.monotonic())
                if time.monotonic() - since > UNREACHABLE_GIVE_UP_S:
                    waiting.discard(server)
                continue
            silent_since.pop(server, None)
            if status.get("plan_id") != record.plan_id:
                record.nodes[server]["state"] = "replaced"
                waiting.discard(server)
                continue
            entry = record.nodes[server]
            entry.update(state=status.get("state"), elapsed_s=status.get("elapsed_s"))
            entry["received"] = {by_url.get(str(u).rstrip("/"), origin): int(n) for u, n in status["received"].items()}
            if status.get("state") in _DONE_STATES:
                waiting.discard(server)
        record.measured = _measured(record, graph)
        if waiting:
            await asyncio.sleep(poll_s)
    states = {n.get("state") for n in record.nodes.values()}
    record.state = "complete" if states <= {"applied", "replaced"} else ("timeout" if waiting else "incomplete")
    record.time_s = time.monotonic() - record.started
    log.info("delivery of %s: %s in %.2f s", record.plan_id, record.state, record.time_s)


def backhaul_report(
    topology: Topology, nodes: Mapping[str, Mapping[str, Any]], refs: Mapping[str, BlockRef]
) -> dict[str, Any]:
    """Bytes on backhaul links for the blocks to fetch, with and without relaying along a tree."""
    origin = topology.origin
    needs = {s: n.get("to_fetch", []) for s, n in nodes.items() if n.get("to_fetch")}
    if origin is None or not needs:
        return {"total_with_relay": 0, "total_without_relay": 0}
    try:
        report = relay_plan(topology.graph, origin, needs=needs, block_sizes={b: r.size for b, r in refs.items()})
    except Exception as e:  # an unreachable server only loses the report
        return {"error": str(e)[:300]}
    return {
        "total_with_relay": report.total_with_relay,
        "total_without_relay": report.total_without_relay,
        "links": [
            {"a": a, "b": b, "with_relay": v, "without_relay": report.without_relay.get((a, b), 0)}
            for (a, b), v in report.with_relay.items()
        ],
    }


def _measured(record: DeliveryRecord, graph: nx.Graph) -> dict[Link, int]:
    out: dict[Link, int] = {}
    for server, entry in record.nodes.items():
        for source, nbytes in entry.get("received", {}).items():
            for link in path_links(graph, server, source):
                out[link] = out.get(link, 0) + nbytes
    return out


async def _plan_status(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{url}/v1/node/plan", timeout=_POLL_TIMEOUT) as resp:
            if resp.status != 200:
                return None
            doc: dict[str, Any] = await resp.json()
            return doc
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
