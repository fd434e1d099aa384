"""The placement controller's work: gather models and demand, solve, diff, push plans to nodes.

A recomputation reads every model's manifest from the origin (a LoRA model's block set is
its adapter's blocks plus its base's: that is where TrimCaching's sharing comes from), the
decayed demand each edge node reports (a uniform prior when no node has seen a request),
solves the placement off the event loop, and sends each node the set of blocks it must
hold. The block → nodes lookup table follows the last plan.
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cachenet.httpclient import auth_headers, raise_for_status
from cachenet.manifest import BlockRef, ModelManifest
from placement.problem import Placement, build_problem
from placement.relay import relay_plan
from placement.solve import solve
from placement.topology import Topology

__all__ = ("Controller", "RunSummary")
log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """One recomputation: inputs, expected hit ratio, per-node plan diff, push results."""

    run_id: int
    solver: str
    created_at: float
    hit_ratio: float
    runtime_s: float
    inputs: dict[str, Any]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    backhaul: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON form, as stored and served."""
        return {
            "run_id": self.run_id,
            "solver": self.solver,
            "created_at": self.created_at,
            "hit_ratio": self.hit_ratio,
            "runtime_s": self.runtime_s,
            "inputs": self.inputs,
            "nodes": self.nodes,
            "backhaul": self.backhaul,
            "bytes_moved": sum(n.get("bytes_to_fetch", 0) for n in self.nodes.values()),
        }


class Controller:
    """Recomputes placements for a topology and pushes them to the edge nodes."""

    def __init__(
        self,
        topology: Topology,
        *,
        origin_url: str,
        node_urls: Mapping[str, str],
        token: str | None,
    ) -> None:
        self.topology = topology
        self.origin_url = origin_url.rstrip("/")
        self.node_urls = {k: v.rstrip("/") for k, v in node_urls.items()}
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self.placement: Placement | None = None
        self.plans: dict[str, list[BlockRef]] = {}
        self.runs: list[RunSummary] = []
        self._lock = asyncio.Lock()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session to the origin and the nodes (opened on first use, in the loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120, connect=5))
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    def lookup_table(self) -> dict[str, list[str]]:
        """block id → URLs of the nodes told to hold it."""
        table: dict[str, list[str]] = {}
        for server, refs in self.plans.items():
            url = self.node_urls.get(server)
            if url is None:
                continue
            for ref in refs:
                table.setdefault(ref.block_id, []).append(url)
        return table

    async def recompute(self, *, solver: str, options: Mapping[str, Any] | None = None) -> RunSummary:
        """Solve with `solver` and push the plans; one recomputation at a time."""
        async with self._lock:
            return await self._recompute(solver, dict(options or {}))

    async def _recompute(self, solver: str, options: dict[str, Any]) -> RunSummary:
        manifests = await self._manifests()
        refs: dict[str, BlockRef] = {}
        models: dict[str, dict[str, int]] = {}
        latency: dict[str, float] = {}
        by_name = {m.name: m for m in manifests}
        for m in manifests:
            blocks = dict(m.unique_blocks())
            if m.base is not None and m.base.name in by_name:
                blocks.update(by_name[m.base.name].unique_blocks())
            refs.update(blocks)
            models[m.name] = {b: r.size for b, r in blocks.items()}
            if isinstance(m.metadata.get("latency_s"), int | float):
                latency[m.name] = float(m.metadata["latency_s"])
        demand, demand_source = await self._demand(list(models))
        started = time.perf_counter()
        if models:
            problem = build_problem(self.topology, models, demand, latency_requirements=latency or None)
            placement = await asyncio.to_thread(solve, problem, solver=solver, **options)
        else:
            placement = Placement({}, {}, 0.0, solver, 0.0)
        runtime = time.perf_counter() - started
        plans = {s: [refs[b] for b in placement.blocks.get(s, ())] for s in self.topology.server_ids()}
        nodes = await self._push(plans)
        summary = RunSummary(
            run_id=len(self.runs) + 1,
            solver=solver,
            created_at=time.time(),
            hit_ratio=placement.hit_ratio,
            runtime_s=runtime,
            inputs={"models": len(models), "blocks": len(refs), "demand": demand_source,
                    "servers": len(self.topology.servers), "users": len(self.topology.users)},
            nodes=nodes,
            backhaul=self._backhaul(nodes, refs),
        )
        self.placement, self.plans = placement, plans
        self.runs.append(summary)
        log.info("placement run %d (%s): hit ratio %.3f", summary.run_id, solver, placement.hit_ratio)
        return summary

    async def _manifests(self) -> list[ModelManifest]:
        async with self.session.get(f"{self.origin_url}/v1/models") as resp:
            await raise_for_status(resp)
            listing = (await resp.json())["models"]
        out = []
        for entry in listing:
            name = entry["name"]
            async with self.session.get(f"{self.origin_url}/v1/models/{name}/revisions/main") as resp:
                if resp.status == 404:
                    continue
                await raise_for_status(resp)
                out.append(ModelManifest.from_json(await resp.json()))
        return out

    async def _demand(self, model_names: list[str]) -> tuple[dict[tuple[str, str], float], str]:
        """p_{k,i}: node-reported demand per cell, mapped onto users; a uniform prior without any."""
        users = self.topology.user_ids()
        served_by: dict[str, list[str]] = {}
        for u in self.topology.users:
            if u.server is not None:
                served_by.setdefault(u.server, []).append(u.id)
        counts: dict[tuple[str, str], float] = {}
        for server, url in self.node_urls.items():
            try:
                async with self.session.get(f"{url}/v1/node/demand") as resp:
                    await raise_for_status(resp)
                    rows = (await resp.json())["demand"]
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.warning("node %s unreachable for demand: %r", server, e)
                continue
            for row in rows:
                model, cell, count = row["model"], row.get("cell"), float(row["count"])
                if model not in model_names:
                    continue
                targets = [cell] if cell in users else served_by.get(server) or list(users)
                for user in targets:
                    counts[(user, model)] = counts.get((user, model), 0.0) + count / len(targets)
        total = sum(counts.values())
        if total > 0:
            return {k: v / total for k, v in counts.items()}, "nodes"
        n = len(users) * len(model_names)
        return {(u, m): 1.0 / n for u in users for m in model_names}, "uniform prior"

    async def _push(self, plans: Mapping[str, list[BlockRef]]) -> dict[str, dict[str, Any]]:
        """Diff each plan against what the node holds, then send it."""
        out: dict[str, dict[str, Any]] = {}
        for server, refs in plans.items():
            url = self.node_urls.get(server)
            planned = {r.block_id: r for r in refs}
            entry: dict[str, Any] = {"url": url, "blocks": len(planned), "bytes": sum(r.size for r in refs)}
            if url is None:
                entry["pushed"] = False
                entry["error"] = "no URL known for this server"
                out[server] = entry
                continue
            try:
                async with self.session.get(f"{url}/v1/node/state", params={"blocks": "1"}) as resp:
                    await raise_for_status(resp)
                    held = set((await resp.json())["block_ids"] or [])
                fetch = [r for b, r in planned.items() if b not in held]
                entry.update(blocks_to_fetch=len(fetch), bytes_to_fetch=sum(r.size for r in fetch),
                             blocks_to_release=len(held - set(planned)), to_fetch=[r.block_id for r in fetch])
                body = {"plan_id": f"run-{len(self.runs) + 1}",
                        "blocks": [[r.block_id, r.blake3, r.size] for r in refs]}
                async with self.session.put(f"{url}/v1/node/plan", json=body, headers=auth_headers(self.token)) as resp:
                    await raise_for_status(resp)
                entry["pushed"] = True
            except Exception as e:  # a node down must not stop the others' plans
                log.warning("could not push the plan to %s (%s): %r", server, url, e)
                entry["pushed"] = False
                entry["error"] = str(e)[:300]
            out[server] = entry
        return out

    def _backhaul(self, nodes: Mapping[str, Mapping[str, Any]], refs: Mapping[str, BlockRef]) -> dict[str, Any]:
        """Bytes on backhaul links for the blocks to fetch, with and without relaying along a tree."""
        origin = self.topology.origin
        needs = {s: n.get("to_fetch", []) for s, n in nodes.items() if n.get("to_fetch")}
        if origin is None or not needs:
            return {"total_with_relay": 0, "total_without_relay": 0}
        try:
            report = relay_plan(self.topology.graph, origin, needs=needs,
                                block_sizes={b: r.size for b, r in refs.items()})
        except Exception as e:  # an unreachable server only loses the report
            return {"error": str(e)[:300]}
        return {
            "total_with_relay": report.total_with_relay,
            "total_without_relay": report.total_without_relay,
            "links": [{"a": a, "b": b, "with_relay": v, "without_relay": report.without_relay.get((a, b), 0)}
                      for (a, b), v in report.with_relay.items()],
        }
