"""The placement controller's work: gather models and demand, solve, diff, push plans to nodes.

A recomputation reads every model's manifest from the origin (a LoRA model's block set is
its adapter's blocks plus its base's: that is where TrimCaching's sharing comes from), the
decayed demand each edge node reports (a uniform prior when no node has seen a request),
solves the placement off the event loop, and sends each node the set of blocks it must
hold. The block → nodes lookup table follows the last plan.

Every run is stored in the origin's catalogue (`POST /v1/placement-runs`, issue #4): the
controller imports nothing of `registry`. A run the origin cannot take yet stays in memory
and in a spool file (`unsaved-runs.json`), and is sent again before the next run.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp

from cachenet.atomicfile import atomic_write_bytes
from cachenet.errors import BadInput, CachenetError, UpstreamUnavailable
from cachenet.httpclient import auth_headers, raise_for_status
from cachenet.manifest import BlockRef, ModelManifest
from cachenet.protocol.codec import decode_json, encode_json
from cachenet.protocol.node import NodeDemand, NodeState, PlanRequest
from cachenet.protocol.placement import PlacementRunList
from placement.curves import capacity_curve
from placement.problem import Placement, build_problem
from placement.relay import relay_plan
from placement.solve import solve
from placement.topology import Topology

__all__ = (
    "Controller",
    "PlacementInputs",
    "RunSummary",
    "SIMULATION_FRACTIONS",
)
log = logging.getLogger(__name__)

SIMULATION_FRACTIONS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
SIMULATION_SOLVERS: Final = ("trimcaching-ls", "trimcaching-gen", "independent")
MAX_UNSAVED_RUNS: Final = 100
_ORIGIN_RUNS_TIMEOUT: Final = aiohttp.ClientTimeout(total=5, connect=2)
_NETWORK_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError, ValueError)


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
        """JSON form, as stored and served (the per-node lists of block ids stay in memory)."""
        return {
            "run_id": self.run_id,
            "solver": self.solver,
            "created_at": self.created_at,
            "hit_ratio": self.hit_ratio,
            "runtime_s": self.runtime_s,
            "inputs": self.inputs,
            "nodes": {s: {k: v for k, v in n.items() if k != "to_fetch"} for s, n in self.nodes.items()},
            "backhaul": self.backhaul,
            "bytes_moved": sum(n.get("bytes_to_fetch", 0) for n in self.nodes.values()),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RunSummary":
        """Back from `to_json` (as read from the spool file)."""
        return cls(
            run_id=int(doc["run_id"]),
            solver=str(doc["solver"]),
            created_at=float(doc["created_at"]),
            hit_ratio=float(doc["hit_ratio"]),
            runtime_s=float(doc["runtime_s"]),
            inputs=dict(doc["inputs"]),
            nodes={str(k): dict(v) for k, v in doc["nodes"].items()},
            backhaul=dict(doc.get("backhaul") or {}),
        )


@dataclass(frozen=True, slots=True)
class PlacementInputs:
    """What a recomputation solves over: block refs, model → {block id: size}, demand, latency."""

    refs: dict[str, BlockRef]
    models: dict[str, dict[str, int]]
    demand: dict[tuple[str, str], float]
    demand_source: str
    latency: dict[str, float]

    @property
    def catalogue_bytes(self) -> int:
        """Bytes of every distinct block of every model."""
        return sum(r.size for r in self.refs.values())


class Controller:
    """Recomputes placements for a topology and pushes them to the edge nodes."""

    def __init__(
        self,
        topology: Topology,
        *,
        origin_url: str,
        node_urls: Mapping[str, str],
        token: str | None,
        spool_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topology = topology
        self.origin_url = origin_url.rstrip("/")
        self.node_urls = {k: v.rstrip("/") for k, v in node_urls.items()}
        self.token = token
        self.spool_path = spool_path
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.placement: Placement | None = None
        self.plans: dict[str, list[BlockRef]] = {}
        self.last_inputs: PlacementInputs | None = None
        self.runs: list[RunSummary] = []
        self.unsaved: list[RunSummary] = []
        self._last_run_id: int | None = None
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

    async def gather_inputs(self) -> PlacementInputs:
        """Every model's blocks from the origin and the demand the nodes report."""
        refs, models, latency = await self._catalogue()
        demand, demand_source = await self._demand(list(models))
        return PlacementInputs(refs, models, demand, demand_source, latency)

    async def catalogue_models(self) -> dict[str, dict[str, int]]:
        """model → {block id: size} of every published model (a LoRA model's include its base's)."""
        return (await self._catalogue())[1]

    async def _catalogue(self) -> tuple[dict[str, BlockRef], dict[str, dict[str, int]], dict[str, float]]:
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
        return refs, models, latency

    async def save_run(self, summary: RunSummary) -> bool:
        """Store `summary` (and runs the origin missed before) in the catalogue; False if kept unsaved."""
        self.unsaved.append(summary)
        if len(self.unsaved) > MAX_UNSAVED_RUNS:
            dropped = self.unsaved.pop(0)
            log.error(
                "dropping placement run %d: over %d runs the origin never stored", dropped.run_id, MAX_UNSAVED_RUNS
            )
        try:
            while self.unsaved:
                run = self.unsaved[0]
                try:
                    async with self.session.post(
                        f"{self.origin_url}/v1/placement-runs",
                        json=run.to_json(),
                        headers=auth_headers(self.token),
                        timeout=_ORIGIN_RUNS_TIMEOUT,
                    ) as resp:
                        await raise_for_status(resp)
                        stored_as = (await resp.json())["id"]
                except BadInput as e:  # sending it again cannot help
                    log.error("origin refused placement run %d, dropping it: %s", run.run_id, e)
                    stored_as = None
                self.unsaved.pop(0)
                log.debug("placement run %d stored in the catalogue as %s", run.run_id, stored_as)
        except (*_NETWORK_ERRORS, CachenetError) as e:
            log.warning(
                "origin %s did not store placement run %d (%r); %d run(s) kept until it does",
                self.origin_url,
                summary.run_id,
                e,
                len(self.unsaved),
            )
        await self._write_spool()
        return not self.unsaved

    async def load_unsaved(self) -> None:
        """Read runs a previous process could not store (from the spool file)."""
        if self.spool_path is None:
            return
        path = self.spool_path
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return
        try:
            runs = [RunSummary.from_json(d) for d in json.loads(raw)]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("ignoring unreadable spool of unsaved placement runs %s: %r", path, e)
            return
        self.unsaved = runs + self.unsaved
        log.warning("%d placement run(s) from %s not stored at the origin yet", len(runs), path)

    async def recent_runs(self, *, limit: int = 20) -> tuple[list[dict[str, Any]], Literal["origin", "memory"]]:
        """The latest runs, newest first, from the catalogue (or from memory when the origin is down).

        Returns the runs (each with `stored`: whether the catalogue has it) and where they came from.
        """
        try:
            async with self.session.get(
                f"{self.origin_url}/v1/placement-runs",
                params={"limit": str(limit)},
                timeout=_ORIGIN_RUNS_TIMEOUT,
            ) as resp:
                await raise_for_status(resp)
                rows = decode_json(await resp.read(), PlacementRunList, what="the origin's placement runs").runs
            runs = [{**r.summary, "catalogue_id": r.id, "stored": True} for r in rows]
            source: Literal["origin", "memory"] = "origin"
        except (*_NETWORK_ERRORS, CachenetError, KeyError, TypeError) as e:
            log.warning("origin %s cannot list placement runs (%r); showing the runs in memory", self.origin_url, e)
            unsaved = {id(r) for r in self.unsaved}
            runs = [{**r.to_json(), "stored": True} for r in self.runs if id(r) not in unsaved]
            source = "memory"
        runs += [{**r.to_json(), "stored": False} for r in self.unsaved]
        runs.sort(key=lambda r: (float(r.get("created_at") or 0.0), int(r.get("run_id") or 0)), reverse=True)
        return runs[:limit], source

    async def simulate(
        self,
        *,
        fractions: Sequence[float] = SIMULATION_FRACTIONS,
        solvers: Sequence[str] = SIMULATION_SOLVERS,
    ) -> dict[str, Any]:
        """Hit ratio vs per-server capacity (fractions of the catalogue) for each solver, off the loop.

        Uses the inputs of the last run in this process, else gathers them now.
        """
        inputs = self.last_inputs or await self.gather_inputs()
        return await asyncio.to_thread(_capacity_curves, self.topology, inputs, fractions, solvers)

    async def _recompute(self, solver: str, options: dict[str, Any]) -> RunSummary:
        inputs = await self.gather_inputs()
        refs, models = inputs.refs, inputs.models
        run_id = await self._next_run_id()
        started = time.perf_counter()
        if models:
            problem = build_problem(self.topology, models, inputs.demand, latency_requirements=inputs.latency or None)
            placement = await asyncio.to_thread(solve, problem, solver=solver, **options)
        else:
            placement = Placement({}, {}, 0.0, solver, 0.0)
        runtime = time.perf_counter() - started
        plans = {s: [refs[b] for b in placement.blocks.get(s, ())] for s in self.topology.server_ids()}
        nodes = await self._push(plans, plan_id=f"run-{run_id}")
        summary = RunSummary(
            run_id=run_id,
            solver=solver,
            created_at=self._clock(),
            hit_ratio=placement.hit_ratio,
            runtime_s=runtime,
            inputs={
                "models": len(models),
                "blocks": len(refs),
                "bytes": inputs.catalogue_bytes,
                "demand": inputs.demand_source,
                "servers": len(self.topology.servers),
                "users": len(self.topology.users),
            },
            nodes=nodes,
            backhaul=self._backhaul(nodes, refs),
        )
        self.placement, self.plans, self.last_inputs = placement, plans, inputs
        self.runs.append(summary)
        del self.runs[:-MAX_UNSAVED_RUNS]
        self._last_run_id = run_id
        log.info("placement run %d (%s): hit ratio %.3f", summary.run_id, solver, placement.hit_ratio)
        await self.save_run(summary)
        return summary

    async def _next_run_id(self) -> int:
        """One more than the latest run known here or, at the first run of a process, in the catalogue."""
        if self._last_run_id is None:
            latest, _ = await self.recent_runs(limit=1)
            self._last_run_id = max((int(r.get("run_id") or 0) for r in latest), default=0)
        known = [r.run_id for r in self.unsaved] + [r.run_id for r in self.runs[-1:]]
        return max([self._last_run_id, *known]) + 1

    async def _write_spool(self) -> None:
        path = self.spool_path
        if path is None:
            return
        if self.unsaved:
            data = json.dumps([r.to_json() for r in self.unsaved]).encode()
            await asyncio.to_thread(_write_file, path, data)
        else:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _manifests(self) -> list[ModelManifest]:
        """The `main` manifest of every model at the origin.

        Raises:
            UpstreamUnavailable: the origin cannot be reached.
        """
        try:
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
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise UpstreamUnavailable(
                f"origin {self.origin_url} unreachable while reading the models ({e!r}); "
                "start it or fix --origin, then recompute again",
                url=self.origin_url,
            ) from e
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
                    rows = decode_json(await resp.read(), NodeDemand, what=f"node {server}'s demand").demand
            except (aiohttp.ClientError, TimeoutError, OSError, BadInput) as e:
                log.warning("node %s unreachable for demand (or its answer is malformed): %r", server, e)
                continue
            for row in rows:
                model, cell, count = row.model, row.cell, row.count
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

    async def _push(self, plans: Mapping[str, list[BlockRef]], *, plan_id: str) -> dict[str, dict[str, Any]]:
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
                    state = decode_json(await resp.read(), NodeState, what=f"node {server}'s state")
                    held = set(state.block_ids or [])
                fetch = [r for b, r in planned.items() if b not in held]
                entry.update(
                    blocks_to_fetch=len(fetch),
                    bytes_to_fetch=sum(r.size for r in fetch),
                    blocks_to_release=len(held - set(planned)),
                    to_fetch=[r.block_id for r in fetch],
                )
                body = encode_json(PlanRequest([(r.block_id, r.blake3, r.size) for r in refs], plan_id))
                headers = {**auth_headers(self.token), "Content-Type": "application/json"}
                async with self.session.put(f"{url}/v1/node/plan", data=body, headers=headers) as resp:
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
            report = relay_plan(
                self.topology.graph, origin, needs=needs, block_sizes={b: r.size for b, r in refs.items()}
            )
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


def _capacity_curves(
    topology: Topology, inputs: PlacementInputs, fractions: Sequence[float], solvers: Sequence[str]
) -> dict[str, Any]:
    """Solve the same demand with every server's capacity set to each fraction of the catalogue."""
    total = inputs.catalogue_bytes
    if not inputs.models or total <= 0:
        return {"available": False, "reason": "no model is published yet"}
    problem = build_problem(topology, inputs.models, inputs.demand, latency_requirements=inputs.latency or None)
    per_server = [max(1, int(fraction * total)) for fraction in fractions]
    curves = capacity_curve(problem, per_server, solvers)
    for points in curves.values():
        for point, fraction in zip(points, fractions, strict=True):
            point["fraction"] = fraction
    capacities = [s.capacity_bytes for s in topology.servers]
    return {
        "available": True,
        "catalogue_bytes": total,
        "models": len(inputs.models),
        "demand": inputs.demand_source,
        "current_fraction": sum(capacities) / len(capacities) / total if capacities else None,
        "curves": curves,
    }


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
