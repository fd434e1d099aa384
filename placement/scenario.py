"""Scenarios (topology + models as block sets + demand), their YAML form, and a synthetic generator.

    seed: 0                       # Rayleigh fading seed
    topology: {...}               # as in topology.py
    models:
      lora-0007:
        backbone: gpt2-small
        latency_requirement_s: 4.0
        blocks: {<32-hex block id>: <bytes>, ...}
    demand:                       # p_{k,i}; missing pairs are 0
      user-3: {lora-0007: 0.0125, ...}

Synthetic catalogues use real tensor shapes: GPT-2 small / medium / large (fp16 by default)
with PEFT-style LoRA adapters on `attn.c_attn` (rank chosen so the adapter falls in
`lora_size_range`), or ResNet-18/50/101-style CNNs whose task models share the frozen
bottom layers up to a random depth and carry their own fine-tuned upper layers and head.
"""

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import yaml

from placement.errors import ScenarioInvalid, TopologyInvalid
from placement.problem import PlacementProblem, build_problem
from placement.topology import (
    LinkInfo,
    RadioInfo,
    ServerInfo,
    Topology,
    UserInfo,
    parse_topology,
    topology_to_dict,
)

__all__ = (
    "BACKBONES",
    "ModelInfo",
    "Scenario",
    "backbone_tensors",
    "generate_scenario",
    "read_scenario",
    "synthetic_block_id",
    "write_scenario",
)

# GPT-2: (d_model, layers); vocabulary 50257, context 1024 (Radford et al., 2019).
_GPT2: Final = {"gpt2-small": (768, 12), "gpt2-medium": (1024, 24), "gpt2-large": (1280, 36)}
# ResNet stages: (parameters per bottleneck/basic block, blocks) for stem, 4 stages; fc width.
_RESNET: Final = {
    "resnet18": ([9_408], [(73_984, 2), (262_784, 2), (1_049_856, 2), (4_196_864, 2)], 512),
    "resnet50": ([9_408], [(71_936, 3), (304_896, 4), (1_183_061, 6), (4_988_245, 3)], 2048),
    "resnet101": ([9_408], [(71_936, 3), (304_896, 4), (1_134_369, 23), (4_988_245, 3)], 2048),
}
BACKBONES: Final = tuple(_GPT2) + tuple(_RESNET)
_GPT2_VOCAB: Final = 50_257
_GPT2_CONTEXT: Final = 1024
_DEFAULT_RADIO: Final = RadioInfo(bandwidth_hz=100e6, tx_power_dbm=43.0)  # assumed 5G small cell


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Metadata of a model in a scenario."""

    backbone: str | None = None
    latency_requirement_s: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Scenario:
    """A topology, a catalogue of models as {block id: size}, and demand (users x models)."""

    topology: Topology
    models: Mapping[str, Mapping[str, int]]
    model_info: Mapping[str, ModelInfo]
    demand: np.ndarray
    seed: int | None = None
    model_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_names", tuple(self.models))
        expected = (len(self.topology.users), len(self.models))
        if self.demand.shape != expected:
            raise ScenarioInvalid(f"demand has shape {self.demand.shape}, expected {expected}", field="demand")

    def to_problem(self, *, capacity_bytes: int | None = None) -> PlacementProblem:
        """The placement problem; `capacity_bytes` overrides every server's capacity."""
        topology = self.topology
        if capacity_bytes is not None:
            topology = _with_capacity(topology, capacity_bytes)
        requirements = {
            m: info.latency_requirement_s
            for m, info in self.model_info.items()
            if info.latency_requirement_s is not None
        }
        return build_problem(topology, self.models, self.demand, latency_requirements=requirements, seed=self.seed)


def synthetic_block_id(name: str) -> str:
    """A 32-digit lowercase hex id derived from a name, for synthetic catalogues."""
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def backbone_tensors(kind: str, *, dtype_bytes: int = 2) -> dict[str, int]:
    """Tensor name -> bytes of a backbone (GPT-2 sizes, or ResNet units as `unit.NN`)."""
    if kind in _GPT2:
        d, layers = _GPT2[kind]
        shapes: dict[str, int] = {"wte.weight": _GPT2_VOCAB * d, "wpe.weight": _GPT2_CONTEXT * d}
        for layer in range(layers):
            p = f"h.{layer}."
            shapes |= {
                p + "ln_1.weight": d, p + "ln_1.bias": d,
                p + "attn.c_attn.weight": d * 3 * d, p + "attn.c_attn.bias": 3 * d,
                p + "attn.c_proj.weight": d * d, p + "attn.c_proj.bias": d,
                p + "ln_2.weight": d, p + "ln_2.bias": d,
                p + "mlp.c_fc.weight": d * 4 * d, p + "mlp.c_fc.bias": 4 * d,
                p + "mlp.c_proj.weight": 4 * d * d, p + "mlp.c_proj.bias": d,
            }  # fmt: skip
        shapes |= {"ln_f.weight": d, "ln_f.bias": d}
        return {name: n * dtype_bytes for name, n in shapes.items()}
    if kind in _RESNET:
        stem, stages, _ = _RESNET[kind]
        units = list(stem) + [n for n, count in stages for _ in range(count)]
        return {f"unit.{u:02d}": n * dtype_bytes for u, n in enumerate(units)}
    raise ScenarioInvalid(f"unknown backbone {kind!r}; choose one of {list(BACKBONES)}", field="backbones")


def generate_scenario(
    *,
    servers: int = 12,
    users: int = 40,
    models: int = 100,
    backbones: int | tuple[str, ...] = 3,
    capacity_bytes: int = 2 * 10**9,
    seed: int = 0,
    family: Literal["lora", "cnn"] = "lora",
    area_m: float = 1000.0,
    lora_size_range: tuple[int, int] = (300_000, 30_000_000),
    zipf_exponent: float = 0.8,
    latency_range_s: tuple[float, float] = (2.0, 12.0),
    backhaul_rate_bps: float = 1e9,
    radio: RadioInfo = _DEFAULT_RADIO,
    overhead_s: float = 0.05,
    dtype_bytes: int = 2,
    adapter_blocks: Literal["tensor", "single"] = "tensor",
) -> Scenario:
    """A synthetic scenario: servers on a jittered grid, users uniform in the square, Zipf demand.

    LoRA family: `models` adapters spread round-robin over the backbones (GPT-2 sizes), each
    with its own blocks. CNN family: task models over ResNet backbones sharing the first d
    units (d random) and owning the rest plus a head. Backhaul: a ring plus links to each
    server's two nearest neighbours, all at `backhaul_rate_bps`.
    """
    if servers < 1 or users < 0 or models < 0:
        raise ScenarioInvalid("servers must be >= 1, users and models >= 0", field="sizes")
    if not lora_size_range[0] <= lora_size_range[1]:
        raise ScenarioInvalid(f"lora_size_range {lora_size_range} is empty", field="lora_size_range")
    rng = np.random.default_rng(seed)
    kinds = _backbone_kinds(backbones, family)
    topology = _random_topology(
        servers, users, rng, area_m=area_m, capacity_bytes=capacity_bytes,
        backhaul_rate_bps=backhaul_rate_bps, radio=radio, overhead_s=overhead_s,
    )  # fmt: skip
    catalogue: dict[str, dict[str, int]] = {}
    info: dict[str, ModelInfo] = {}
    base = {k: backbone_tensors(k, dtype_bytes=dtype_bytes) for k in kinds}
    base_ids = {k: {t: synthetic_block_id(f"{k}/{t}") for t in base[k]} for k in kinds}
    for m in range(models):
        kind = kinds[m % len(kinds)]
        name = f"{kind}-{'lora' if family == 'lora' else 'task'}-{m:04d}"
        if family == "lora":
            blocks = {base_ids[kind][t]: s for t, s in base[kind].items()}
            blocks |= _lora_blocks(name, kind, rng, lora_size_range, dtype_bytes, adapter_blocks)
        else:
            blocks = _cnn_blocks(name, kind, rng, base[kind], base_ids[kind], dtype_bytes)
        catalogue[name] = blocks
        low, high = latency_range_s
        info[name] = ModelInfo(backbone=kind, latency_requirement_s=float(rng.uniform(low, high)))
    ranks = rng.permutation(models) + 1
    popularity = ranks.astype(float) ** -zipf_exponent if models else np.zeros(0)
    popularity = popularity / popularity.sum() if models else popularity
    demand = np.tile(popularity / max(users, 1), (users, 1))
    return Scenario(topology=topology, models=catalogue, model_info=info, demand=demand, seed=seed)


def read_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as e:
        raise ScenarioInvalid(f"cannot read scenario {str(path)!r}: {e}", field="path") from e
    except yaml.YAMLError as e:
        raise ScenarioInvalid(f"scenario {str(path)!r} is not valid YAML: {e}", field="path") from e
    if not isinstance(data, Mapping):
        raise ScenarioInvalid("a scenario must be a mapping", field="scenario")
    try:
        topology = parse_topology(data.get("topology"))
    except TopologyInvalid as e:
        raise ScenarioInvalid(f"topology: {e.message}", field=f"topology.{e.attrs.get('field')}") from e
    raw_models = data.get("models") or {}
    if not isinstance(raw_models, Mapping):
        raise ScenarioInvalid("models must map a name to {blocks: {...}}", field="models")
    models: dict[str, dict[str, int]] = {}
    info: dict[str, ModelInfo] = {}
    for name, entry in raw_models.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("blocks"), Mapping):
            raise ScenarioInvalid(f"models.{name}.blocks must map block id -> bytes", field=f"models.{name}")
        models[str(name)] = {str(b): s for b, s in entry["blocks"].items()}
        req = entry.get("latency_requirement_s")
        info[str(name)] = ModelInfo(entry.get("backbone"), None if req is None else float(req))
    users = topology.user_ids()
    user_index = {u: k for k, u in enumerate(users)}
    model_index = {m: i for i, m in enumerate(models)}
    demand = np.zeros((len(users), len(models)))
    raw_demand = data.get("demand") or {}
    if not isinstance(raw_demand, Mapping):
        raise ScenarioInvalid("demand must map user -> {model: probability}", field="demand")
    for user, row in raw_demand.items():
        if str(user) not in user_index or not isinstance(row, Mapping):
            raise ScenarioInvalid(f"demand.{user}: unknown user or not a mapping", field=f"demand.{user}")
        for model, p in row.items():
            if str(model) not in model_index:
                raise ScenarioInvalid(f"demand.{user}: unknown model {model!r}", field=f"demand.{user}")
            if isinstance(p, bool) or not isinstance(p, int | float) or not p >= 0:
                raise ScenarioInvalid(f"demand.{user}.{model} must be >= 0, got {p!r}", field=f"demand.{user}")
            demand[user_index[str(user)], model_index[str(model)]] = float(p)
    seed = data.get("seed")
    return Scenario(topology=topology, models=models, model_info=info, demand=demand, seed=seed)


def write_scenario(scenario: Scenario, path: str | Path) -> None:
    """Write a scenario as YAML atomically (temporary file, fsync, rename)."""
    users = scenario.topology.user_ids()
    doc: dict[str, Any] = {
        "seed": scenario.seed,
        "topology": topology_to_dict(scenario.topology),
        "models": {
            m: {
                "backbone": scenario.model_info[m].backbone,
                "latency_requirement_s": scenario.model_info[m].latency_requirement_s,
                "blocks": dict(blocks),
            }
            for m, blocks in scenario.models.items()
        },
        "demand": {
            users[k]: {
                m: float(scenario.demand[k, i]) for i, m in enumerate(scenario.model_names) if scenario.demand[k, i] > 0
            }
            for k in range(len(users))
        },
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.dump(doc, f, Dumper=_Dumper, sort_keys=False, default_flow_style=None)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _backbone_kinds(backbones: int | tuple[str, ...], family: str) -> tuple[str, ...]:
    if isinstance(backbones, tuple):
        for kind in backbones:
            backbone_tensors(kind)
        return backbones
    pool = tuple(_GPT2) if family == "lora" else tuple(_RESNET)
    if not 1 <= backbones <= len(pool):
        raise ScenarioInvalid(f"backbones must be 1..{len(pool)} for {family}, got {backbones}", field="backbones")
    return pool[:backbones]


def _lora_blocks(
    name: str,
    kind: str,
    rng: np.random.Generator,
    size_range: tuple[int, int],
    dtype_bytes: int,
    mode: str,
) -> dict[str, int]:
    d, layers = _GPT2[kind]
    target = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    rank = max(1, round(target / (layers * 4 * d * dtype_bytes)))
    tensors = {"adapter_config.json": 512}
    for layer in range(layers):
        p = f"base_model.model.transformer.h.{layer}.attn.c_attn."
        tensors[p + "lora_A.weight"] = rank * d * dtype_bytes
        tensors[p + "lora_B.weight"] = 3 * d * rank * dtype_bytes
    if mode == "single":
        return {synthetic_block_id(f"{name}/adapter"): sum(tensors.values())}
    return {synthetic_block_id(f"{name}/{t}"): s for t, s in tensors.items()}


def _cnn_blocks(
    name: str,
    kind: str,
    rng: np.random.Generator,
    units: dict[str, int],
    ids: dict[str, str],
    dtype_bytes: int,
) -> dict[str, int]:
    names = list(units)
    depth = int(rng.integers(1, len(names)))  # frozen bottom units shared with the backbone
    blocks = {ids[u]: units[u] for u in names[:depth]}
    blocks |= {synthetic_block_id(f"{name}/{u}"): units[u] for u in names[depth:]}
    classes = int(rng.integers(10, 1001))
    width = _RESNET[kind][2]
    blocks[synthetic_block_id(f"{name}/fc")] = (width * classes + classes) * dtype_bytes
    return blocks


def _random_topology(
    n_servers: int,
    n_users: int,
    rng: np.random.Generator,
    *,
    area_m: float,
    capacity_bytes: int,
    backhaul_rate_bps: float,
    radio: RadioInfo,
    overhead_s: float,
) -> Topology:
    side = math.ceil(math.sqrt(n_servers))
    cell = area_m / side
    pos = [
        (
            (c % side + 0.5) * cell + rng.uniform(-0.2, 0.2) * cell,
            (c // side + 0.5) * cell + rng.uniform(-0.2, 0.2) * cell,
        )
        for c in range(n_servers)
    ]
    ids = [f"edge-{n + 1}" for n in range(n_servers)]
    servers = tuple(ServerInfo(ids[n], pos[n], capacity_bytes, radio) for n in range(n_servers))
    edges: set[tuple[int, int]] = set()
    for n in range(n_servers):
        if n_servers > 1:
            edges.add(tuple(sorted((n, (n + 1) % n_servers))))  # type: ignore[arg-type]
        near = sorted(range(n_servers), key=lambda m: math.dist(pos[n], pos[m]))[1:3]
        edges |= {tuple(sorted((n, m))) for m in near}  # type: ignore[misc]
    links = tuple(LinkInfo(ids[a], ids[b], backhaul_rate_bps) for a, b in sorted(edges) if a != b)
    users = []
    for k in range(n_users):
        p = (float(rng.uniform(0, area_m)), float(rng.uniform(0, area_m)))
        serving = min(range(n_servers), key=lambda m: math.dist(pos[m], p))
        users.append(UserInfo(f"user-{k + 1}", p, ids[serving]))
    return Topology(name="synthetic", servers=servers, users=tuple(users), links=links, overhead_s=overhead_s)


def _with_capacity(topology: Topology, capacity_bytes: int) -> Topology:
    servers = tuple(ServerInfo(s.id, s.position, capacity_bytes, s.radio, s.port) for s in topology.servers)
    return Topology(
        name=topology.name,
        servers=servers,
        users=topology.users,
        links=topology.links,
        nodes=topology.nodes,
        origin=topology.origin,
        overhead_s=topology.overhead_s,
        latency_requirement_s=topology.latency_requirement_s,
    )
