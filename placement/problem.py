"""The TrimCaching placement problem as a combinatorial object, its results and their checks.

Symbols (Qu et al., "TrimCaching", 2024):

- edge servers n = 1..N with storage capacities Q_n (bytes);
- users k (or cells of users), each associated with a serving server s(k);
- parameter blocks j with sizes D_j; models i, each a block set B_i (size S_i = sum D_j);
- request probabilities p_{k,i} and latency requirements T_{k,i} (seconds);
- latency t(k, i, n) = 8 S_i / r_k + [n != s(k)] S_i b(n, s(k)) + overhead (see `latency.py`;
  b is the seconds per byte of the backhaul path with minimum total transfer time);
- placement x_{n,i} = 1 if server n holds every block of model i; storage on n is the union
  of the blocks of its models, so a shared block counts once: sum_{j in U_i:x=1 B_i} D_j <= Q_n;
- request (k, i) is a hit if some server n with x_{n,i} = 1 has t(k, i, n) <= T_{k,i};
  hit ratio = sum_{hits} p_{k,i} / sum_{k,i} p_{k,i}.

`build_problem` precomputes, per request (k, i), the eligible servers {n : t(k, i, n) <= T_{k,i}},
merges requests for the same model with the same eligible set (weights add up), and coalesces
blocks used by exactly the same set of models into one block group (exact: a placement that
holds a model holds all of them). Solvers then see servers with capacities, models as sets of
block groups with sizes, and weighted requests with eligible server sets.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement.errors import PlacementInfeasible, ScenarioInvalid
from placement.latency import eligible_mask, wireless_rates
from placement.topology import Topology

__all__ = (
    "Placement",
    "PlacementProblem",
    "build_problem",
    "check_feasible",
    "hit_ratio",
    "make_placement",
    "make_problem",
    "storage_used",
)

_CHUNK_CELLS = 20_000_000  # users x models x servers booleans evaluated at once


@dataclass(frozen=True, slots=True, eq=False)
class PlacementProblem:
    """Servers with capacities, models as block-group sets, weighted requests with eligible servers.

    Requests are sorted by model; request r asks for `request_model[r]` with weight
    `request_weight[r]` and can be served by servers
    `eligible_indices[eligible_indptr[r]:eligible_indptr[r + 1]]` (CSR layout).
    `total_weight` also counts requests that no server can serve in time.
    """

    servers: tuple[str, ...]
    capacities: tuple[int, ...]
    block_members: tuple[tuple[str, ...], ...]
    member_sizes: tuple[tuple[int, ...], ...]
    models: tuple[str, ...]
    model_blocks: tuple[tuple[int, ...], ...]
    request_model: np.ndarray
    request_weight: np.ndarray
    eligible_indptr: np.ndarray
    eligible_indices: np.ndarray
    total_weight: float
    block_sizes: np.ndarray = field(init=False)
    model_sizes: np.ndarray = field(init=False)
    model_request_ptr: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n_blocks, n_models, n_req = (
            len(self.block_members),
            len(self.models),
            len(self.request_model),
        )
        if len(self.capacities) != len(self.servers) or len(self.member_sizes) != n_blocks:
            raise ScenarioInvalid("servers/capacities or blocks/sizes differ in length", field="problem")
        if len(self.model_blocks) != n_models or len(self.request_weight) != n_req:
            raise ScenarioInvalid("models/model_blocks or requests differ in length", field="problem")
        if len(self.eligible_indptr) != n_req + 1:
            raise ScenarioInvalid("eligible_indptr must have one entry per request + 1", field="problem")
        if n_req and np.any(np.diff(self.request_model) < 0):
            raise ScenarioInvalid("requests must be sorted by model", field="request_model")
        sizes = np.array([sum(m) for m in self.member_sizes], dtype=np.int64)
        object.__setattr__(self, "block_sizes", sizes)
        object.__setattr__(
            self,
            "model_sizes",
            np.array([int(sizes[list(b)].sum()) for b in self.model_blocks], dtype=np.int64),
        )
        ptr = np.searchsorted(self.request_model, np.arange(n_models + 1), side="left")
        object.__setattr__(self, "model_request_ptr", ptr.astype(np.int64))

    def eligible(self, request: int) -> np.ndarray:
        """Server indices that can serve request `request` in time."""
        return self.eligible_indices[self.eligible_indptr[request] : self.eligible_indptr[request + 1]]

    def shared_blocks(self) -> tuple[int, ...]:
        """Block groups used by two or more models."""
        counts = np.zeros(len(self.block_members), dtype=np.int64)
        for blocks in self.model_blocks:
            counts[list(blocks)] += 1
        return tuple(int(j) for j in np.flatnonzero(counts >= 2))

    def describe(self) -> dict[str, int | float]:
        """Sizes of the instance, for logs and reports."""
        return {
            "servers": len(self.servers),
            "models": len(self.models),
            "block_groups": len(self.block_members),
            "shared_block_groups": len(self.shared_blocks()),
            "requests": len(self.request_model),
            "eligible_pairs": len(self.eligible_indices),
            "total_weight": self.total_weight,
        }


@dataclass(frozen=True, slots=True)
class Placement:
    """A solver's answer: models and blocks per server, hit ratio, solver, runtime, extras."""

    models: Mapping[str, tuple[str, ...]]
    blocks: Mapping[str, tuple[str, ...]]
    hit_ratio: float
    solver: str
    runtime_s: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "solver": self.solver,
            "hit_ratio": self.hit_ratio,
            "runtime_s": self.runtime_s,
            "models": {n: list(m) for n, m in self.models.items()},
            "blocks": {n: list(b) for n, b in self.blocks.items()},
            "info": dict(self.info),
        }


def make_problem(
    capacities: Mapping[str, int],
    models: Mapping[str, Mapping[str, int]],
    requests: Iterable[tuple[str, float, Iterable[str]]],
    *,
    total_weight: float | None = None,
) -> PlacementProblem:
    """Problem from server -> capacity, model -> {block_id: size}, (model, weight, eligible).

    Requests with the same model and eligible set are merged; blocks used by the same models
    are coalesced. `total_weight` defaults to the sum of the request weights.

    Raises:
        ScenarioInvalid: unknown server or model, negative size or weight, conflicting block sizes.
    """
    servers = tuple(capacities)
    server_index = {s: n for n, s in enumerate(servers)}
    caps = []
    for s in servers:
        cap = capacities[s]
        if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 0:
            raise ScenarioInvalid(f"capacity of {s!r} must be an int >= 0, got {cap!r}", field="capacities")
        caps.append(int(cap))
    model_names, groups, members, member_sizes = _coalesce(models)
    model_index = {m: i for i, m in enumerate(model_names)}
    merged: dict[tuple[int, tuple[int, ...]], float] = defaultdict(float)
    total = 0.0
    for model, weight, eligible in requests:
        if model not in model_index:
            raise ScenarioInvalid(f"request for unknown model {model!r}", field="requests", model_id=model)
        w = float(weight)
        if not w >= 0:
            raise ScenarioInvalid(f"request weight must be >= 0, got {weight!r}", field="requests")
        total += w
        try:
            key = tuple(sorted({server_index[s] for s in eligible}))
        except KeyError as e:
            raise ScenarioInvalid(f"request names unknown server {e.args[0]!r}", field="requests") from None
        if key and w > 0:
            merged[(model_index[model], key)] += w
    items = sorted(merged.items())
    indptr = np.zeros(len(items) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(k[1]) for k, _ in items])
    return PlacementProblem(
        servers=servers,
        capacities=tuple(caps),
        block_members=members,
        member_sizes=member_sizes,
        models=model_names,
        model_blocks=groups,
        request_model=np.array([k[0] for k, _ in items], dtype=np.int64),
        request_weight=np.array([w for _, w in items], dtype=float),
        eligible_indptr=indptr,
        eligible_indices=np.array([n for k, _ in items for n in k[1]], dtype=np.int64),
        total_weight=float(total if total_weight is None else total_weight),
    )


def build_problem(
    topology: Topology,
    models: Mapping[str, Mapping[str, int]],
    demand: Mapping[tuple[str, str], float] | np.ndarray,
    *,
    latency_requirements: Mapping[str, float] | float | None = None,
    seed: int | None = None,
) -> PlacementProblem:
    """Problem from a topology, model -> {block_id: size} and demand p_{k,i}.

    `demand` maps (user or cell id, model) to a probability (missing pairs are 0), or is an
    array (users x models) in topology and mapping order. `latency_requirements` gives T per
    model (or one number); a user's own requirement, then the topology default, fill the rest.
    `seed` drives Rayleigh fading.

    Raises:
        ScenarioInvalid: unknown user or model in the demand, negative demand, bad requirement.
    """
    model_names = tuple(models)
    users = topology.user_ids()
    p = _demand_array(demand, users, model_names)
    req = _requirements(topology, model_names, latency_requirements)
    sizes = np.array([sum(int(v) for v in models[m].values()) for m in model_names], dtype=float)
    rates = wireless_rates(topology, seed=seed)
    n_servers, n_users, n_models = len(topology.servers), len(users), len(model_names)
    chunk = max(1, _CHUNK_CELLS // max(1, n_users * n_servers))
    keys: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for start in range(0, n_models, chunk):
        stop = min(n_models, start + chunk)
        mask = eligible_mask(topology, sizes[start:stop], req[:, start:stop], rates=rates)
        w = p[:, start:stop]
        keep = (w > 0) & mask.any(axis=2)
        ks, ms = np.nonzero(keep)
        if len(ks) == 0:
            continue
        bits = np.packbits(mask[ks, ms], axis=1)
        model_col = (ms + start).astype(">u4").view(np.uint8).reshape(-1, 4)
        keys.append(np.ascontiguousarray(np.hstack([model_col, bits])))
        weights.append(w[ks, ms])
    capacities = {s.id: s.capacity_bytes for s in topology.servers}
    if not keys:
        return make_problem(capacities, models, [], total_weight=float(p.sum()))
    all_keys = np.vstack(keys)
    void = all_keys.view(np.dtype((np.void, all_keys.shape[1]))).ravel()
    uniq, inverse = np.unique(void, return_inverse=True)
    merged_w = np.bincount(inverse.ravel(), weights=np.concatenate(weights), minlength=len(uniq))
    rows = uniq.view(np.uint8).reshape(len(uniq), -1)
    model_idx = rows[:, :4].copy().view(">u4").ravel().astype(np.int64)
    elig = np.unpackbits(rows[:, 4:], axis=1, count=n_servers).astype(bool)
    order = np.argsort(model_idx, kind="stable")
    model_idx, merged_w, elig = model_idx[order], merged_w[order], elig[order]
    r_idx, n_idx = np.nonzero(elig)
    indptr = np.zeros(len(model_idx) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(elig.sum(axis=1))
    base = make_problem(capacities, models, [], total_weight=float(p.sum()))
    # make_problem keeps the mapping's model order, so model indices agree.
    return PlacementProblem(
        servers=base.servers,
        capacities=base.capacities,
        block_members=base.block_members,
        member_sizes=base.member_sizes,
        models=base.models,
        model_blocks=base.model_blocks,
        request_model=model_idx,
        request_weight=merged_w,
        eligible_indptr=indptr,
        eligible_indices=n_idx.astype(np.int64),
        total_weight=base.total_weight,
    )


def make_placement(
    problem: PlacementProblem,
    chosen: Sequence[Iterable[int]],
    *,
    solver: str,
    runtime_s: float,
    info: Mapping[str, Any] | None = None,
) -> Placement:
    """`Placement` from per-server model indices; blocks are the union of the models' blocks."""
    models: dict[str, tuple[str, ...]] = {}
    blocks: dict[str, tuple[str, ...]] = {}
    for n, server in enumerate(problem.servers):
        picked = sorted(set(chosen[n]))
        models[server] = tuple(problem.models[i] for i in picked)
        groups = sorted({g for i in picked for g in problem.model_blocks[i]})
        blocks[server] = tuple(b for g in groups for b in problem.block_members[g])
    return Placement(
        models=models,
        blocks=blocks,
        hit_ratio=_hit_ratio_of(problem, chosen),
        solver=solver,
        runtime_s=runtime_s,
        info=dict(info or {}),
    )


def hit_ratio(problem: PlacementProblem, placement: Placement) -> float:
    """Probability-weighted share of requests served in time by a server holding the model."""
    return _hit_ratio_of(problem, _chosen_indices(problem, placement))


def storage_used(problem: PlacementProblem, placement: Placement) -> dict[str, int]:
    """Bytes stored per server: the union of its blocks, so a shared block counts once."""
    sizes = _member_size_lookup(problem)
    out = {}
    for server in problem.servers:
        stored = set(placement.blocks.get(server, ()))
        unknown = stored - sizes.keys()
        if unknown:
            raise PlacementInfeasible(f"server {server!r} stores unknown block {sorted(unknown)[0]!r}", node_id=server)
        out[server] = sum(sizes[b] for b in stored)
    return out


def check_feasible(problem: PlacementProblem, placement: Placement) -> None:
    """Raise `PlacementInfeasible` unless placed models' blocks are stored and capacities hold."""
    known_servers = set(problem.servers)
    for server in set(placement.models) | set(placement.blocks):
        if server not in known_servers:
            raise PlacementInfeasible(f"placement names unknown server {server!r}", node_id=server)
    _chosen_indices(problem, placement)
    model_members = {
        m: {b for g in problem.model_blocks[i] for b in problem.block_members[g]} for i, m in enumerate(problem.models)
    }
    used = storage_used(problem, placement)
    for n, server in enumerate(problem.servers):
        stored = set(placement.blocks.get(server, ()))
        for model in placement.models.get(server, ()):
            missing = model_members[model] - stored
            if missing:
                raise PlacementInfeasible(
                    f"model {model!r} is placed on {server!r} without block {sorted(missing)[0]!r}",
                    node_id=server,
                    model_id=model,
                )
        if used[server] > problem.capacities[n]:
            raise PlacementInfeasible(
                f"server {server!r} stores {used[server]} bytes, over its capacity "
                f"{problem.capacities[n]}; drop models or raise the capacity",
                node_id=server,
            )


def _coalesce(
    models: Mapping[str, Mapping[str, int]],
) -> tuple[
    tuple[str, ...],
    tuple[tuple[int, ...], ...],
    tuple[tuple[str, ...], ...],
    tuple[tuple[int, ...], ...],
]:
    """Group blocks by the exact set of models that use them; one group per distinct set."""
    names = tuple(models)
    size_of: dict[str, int] = {}
    users_of: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        blocks = models[name]
        if not isinstance(blocks, Mapping):
            raise ScenarioInvalid(f"model {name!r}: blocks must map block id -> size", model_id=name)
        for block, size in blocks.items():
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
                raise ScenarioInvalid(
                    f"model {name!r}: block {block!r} size must be an int >= 0, got {size!r}",
                    model_id=name,
                )
            if size_of.setdefault(block, int(size)) != size:
                raise ScenarioInvalid(
                    f"block {block!r} has two sizes ({size_of[block]} and {size}) in the catalogue",
                    block_id=block,
                )
            users_of[block].append(i)
    group_of: dict[tuple[int, ...], int] = {}
    members: list[list[str]] = []
    for block, users in users_of.items():
        g = group_of.setdefault(tuple(users), len(members))
        if g == len(members):
            members.append([])
        members[g].append(block)
    per_model: list[list[int]] = [[] for _ in names]
    for group_users, g in group_of.items():
        for i in group_users:
            per_model[i].append(g)
    return (
        names,
        tuple(tuple(sorted(g)) for g in per_model),
        tuple(tuple(m) for m in members),
        tuple(tuple(size_of[b] for b in m) for m in members),
    )


def _hit_ratio_of(problem: PlacementProblem, chosen: Sequence[Iterable[int]]) -> float:
    if problem.total_weight <= 0:
        return 0.0
    placed = np.zeros((len(problem.servers), len(problem.models)), dtype=bool)
    for n, models in enumerate(chosen):
        placed[n, list(models)] = True
    counts = np.diff(problem.eligible_indptr)
    flags = placed[problem.eligible_indices, np.repeat(problem.request_model, counts)]
    cs = np.concatenate([[0], np.cumsum(flags)])
    hits = (cs[problem.eligible_indptr[1:]] - cs[problem.eligible_indptr[:-1]]) > 0
    return min(1.0, float(problem.request_weight[hits].sum() / problem.total_weight))


def _chosen_indices(problem: PlacementProblem, placement: Placement) -> list[set[int]]:
    model_index = {m: i for i, m in enumerate(problem.models)}
    chosen: list[set[int]] = []
    for server in problem.servers:
        picked = set()
        for model in placement.models.get(server, ()):
            if model not in model_index:
                raise PlacementInfeasible(
                    f"placement puts unknown model {model!r} on {server!r}",
                    node_id=server,
                    model_id=model,
                )
            picked.add(model_index[model])
        chosen.append(picked)
    return chosen


def _member_size_lookup(problem: PlacementProblem) -> dict[str, int]:
    return {
        b: s
        for members, sizes in zip(problem.block_members, problem.member_sizes, strict=True)
        for b, s in zip(members, sizes, strict=True)
    }


def _demand_array(
    demand: Mapping[tuple[str, str], float] | np.ndarray,
    users: tuple[str, ...],
    models: tuple[str, ...],
) -> np.ndarray:
    if isinstance(demand, np.ndarray):
        if demand.shape != (len(users), len(models)):
            raise ScenarioInvalid(
                f"demand array has shape {demand.shape}, expected (users, models) = {(len(users), len(models))}",
                field="demand",
            )
        p = demand.astype(float)
    else:
        user_index = {u: k for k, u in enumerate(users)}
        model_index = {m: i for i, m in enumerate(models)}
        p = np.zeros((len(users), len(models)))
        for key, value in demand.items():
            if not isinstance(key, tuple) or len(key) != 2:
                raise ScenarioInvalid(f"demand key must be (user, model), got {key!r}", field="demand")
            user, model = key
            if user not in user_index:
                raise ScenarioInvalid(f"demand names unknown user or cell {user!r}", field="demand")
            if model not in model_index:
                raise ScenarioInvalid(f"demand names unknown model {model!r}", field="demand", model_id=model)
            p[user_index[user], model_index[model]] += float(value)
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ScenarioInvalid("demand must be finite and >= 0", field="demand")
    return p


def _requirements(topology: Topology, models: tuple[str, ...], given: Mapping[str, float] | float | None) -> np.ndarray:
    req = np.empty((len(topology.users), len(models)))
    col_of = {m: i for i, m in enumerate(models)}
    for k, user in enumerate(topology.users):
        req[k, :] = user.latency_requirement_s or topology.latency_requirement_s
    if isinstance(given, Mapping):
        for model, t in given.items():
            if model not in col_of:
                raise ScenarioInvalid(f"latency requirement for unknown model {model!r}", model_id=model)
            if not float(t) > 0:
                raise ScenarioInvalid(f"latency requirement of {model!r} must be > 0, got {t!r}", model_id=model)
            # A user's own (stricter) requirement wins over the model's.
            col = col_of[model]
            own = np.array([u.latency_requirement_s or np.inf for u in topology.users])
            req[:, col] = np.minimum(float(t), own)
    elif given is not None:
        if not float(given) > 0:
            raise ScenarioInvalid(f"latency requirement must be > 0, got {given!r}", field="latency")
        own = np.array([u.latency_requirement_s or np.inf for u in topology.users])
        req[:, :] = np.minimum(float(given), own)[:, None]
    return req
