"""Edge topology: servers, radio settings, backhaul links and users (or cells), loaded from YAML.

The YAML layout (positions in metres, rates in bit/s, capacities as "4GB", "512MiB" or bytes):

    name: demo
    overhead_s: 0.05                    # fixed per-request overhead
    latency_requirement_s: 10.0         # default T_{k,i}
    radio: {bandwidth_hz: 2e7, tx_power_dbm: 43, noise_dbm_per_hz: -174, rayleigh: false}
    servers:
      - {id: edge-1, position: [0, 0], capacity: 300MB, port: 8101, radio: {...}}
    nodes: [core]                       # optional backhaul-only nodes (routers, the origin)
    origin: core                        # optional: where the origin attaches to the backhaul
    backhaul:
      - {a: edge-1, b: core, rate_bps: 1e9}
    users:                              # or `cells:`; `server` defaults to the nearest
      - {id: u1, position: [120, 40], server: edge-1, latency_requirement_s: 5.0}
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import networkx as nx
import yaml

from cachenet.errors import BadInput
from cachenet.units import parse_size as _parse_bytes
from placement.errors import TopologyInvalid

__all__ = (
    "DEFAULT_LATENCY_REQUIREMENT_S",
    "DEFAULT_OVERHEAD_S",
    "LinkInfo",
    "RadioInfo",
    "ServerInfo",
    "Topology",
    "UserInfo",
    "backhaul_graph",
    "load_topology",
    "parse_size",
    "parse_topology",
    "topology_to_dict",
)

DEFAULT_OVERHEAD_S: Final = 0.0
DEFAULT_LATENCY_REQUIREMENT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class RadioInfo:
    """Downlink radio settings of one edge server."""

    bandwidth_hz: float = 20e6
    tx_power_dbm: float = 43.0
    noise_dbm_per_hz: float = -174.0
    rayleigh: bool = False

    def __post_init__(self) -> None:
        if not (self.bandwidth_hz > 0 and math.isfinite(self.bandwidth_hz)):
            raise TopologyInvalid(
                f"radio.bandwidth_hz must be a positive number, got {self.bandwidth_hz!r}",
                field="radio.bandwidth_hz",
            )
        for name in ("tx_power_dbm", "noise_dbm_per_hz"):
            if not math.isfinite(getattr(self, name)):
                raise TopologyInvalid(f"radio.{name} must be finite", field=f"radio.{name}")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One edge server: id, position in metres, storage capacity in bytes, radio, optional port."""

    id: str
    position: tuple[float, float]
    capacity_bytes: int
    radio: RadioInfo = RadioInfo()
    port: int | None = None


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One user (or cell of users): position, serving server, optional own latency requirement."""

    id: str
    position: tuple[float, float]
    server: str
    latency_requirement_s: float | None = None


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One undirected backhaul link with its rate in bit/s."""

    a: str
    b: str
    rate_bps: float


@dataclass(frozen=True, slots=True)
class Topology:
    """A validated edge topology; `graph` is the backhaul as an undirected networkx graph."""

    name: str
    servers: tuple[ServerInfo, ...]
    users: tuple[UserInfo, ...]
    links: tuple[LinkInfo, ...]
    nodes: tuple[str, ...] = ()
    origin: str | None = None
    overhead_s: float = DEFAULT_OVERHEAD_S
    latency_requirement_s: float = DEFAULT_LATENCY_REQUIREMENT_S
    graph: nx.Graph = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "graph", backhaul_graph(self))

    def server_ids(self) -> tuple[str, ...]:
        """Server ids in file order."""
        return tuple(s.id for s in self.servers)

    def user_ids(self) -> tuple[str, ...]:
        """User (cell) ids in file order."""
        return tuple(u.id for u in self.users)


def parse_size(value: object, *, field_name: str = "capacity") -> int:
    """Bytes from an int or a string like "4GB", "512MiB", "300 MB" (decimal and binary units)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TopologyInvalid(f"{field_name}: expected a size, got {value!r}", field=field_name)
    try:
        return _parse_bytes(value.replace(" ", "") if isinstance(value, str) else value)
    except (BadInput, OverflowError):  # OverflowError: "1e999" is an infinite float
        raise TopologyInvalid(
            f"{field_name}: cannot read size {value!r}; use bytes (>= 0) or e.g. '4GB', '512MiB'",
            field=field_name,
        ) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TopologyInvalid(f"cannot read topology file {str(path)!r}: {e}", field="path") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyInvalid(f"topology file {str(path)!r} is not valid YAML: {e}", field="path") from e
    return parse_topology(data)


def parse_topology(data: object) -> Topology:
    """Validate a decoded topology mapping; every error names the bad field."""
    d = _mapping(data, "topology")
    default_radio = _radio(d.get("radio", {}), "radio", RadioInfo())
    servers = []
    for idx, raw in enumerate(_list(d.get("servers"), "servers", required=True)):
        where = f"servers[{idx}]"
        s = _mapping(raw, where)
        port = s.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise TopologyInvalid(f"{where}.port must be an integer in 1..65535, got {port!r}", field=f"{where}.port")
        if "capacity" not in s:
            raise TopologyInvalid(f"{where}.capacity is missing", field=f"{where}.capacity")
        servers.append(
            ServerInfo(
                id=_ident(s.get("id"), f"{where}.id"),
                position=_position(s.get("position"), f"{where}.position"),
                capacity_bytes=parse_size(s["capacity"], field_name=f"{where}.capacity"),
                radio=_radio(s.get("radio", {}), f"{where}.radio", default_radio),
                port=port,
            )
        )
    server_ids = [s.id for s in servers]
    _unique(server_ids, "servers")
    nodes = tuple(_ident(n, f"nodes[{i}]") for i, n in enumerate(_list(d.get("nodes"), "nodes")))
    _unique(server_ids + list(nodes), "nodes")
    known = set(server_ids) | set(nodes)
    links = []
    for idx, raw in enumerate(_list(d.get("backhaul"), "backhaul")):
        where = f"backhaul[{idx}]"
        link = _mapping(raw, where)
        a, b = _ident(link.get("a"), f"{where}.a"), _ident(link.get("b"), f"{where}.b")
        for end, name in ((a, "a"), (b, "b")):
            if end not in known:
                raise TopologyInvalid(
                    f"{where}.{name}: unknown node {end!r}; declare it under servers or nodes",
                    field=f"{where}.{name}",
                )
        if a == b:
            raise TopologyInvalid(f"{where}: a link needs two different ends", field=where)
        links.append(LinkInfo(a, b, _positive(link.get("rate_bps"), f"{where}.rate_bps")))
    users_raw = d.get("users") if d.get("users") is not None else d.get("cells")
    key = "users" if d.get("users") is not None else "cells"
    users = []
    for idx, raw in enumerate(_list(users_raw, key)):
        where = f"{key}[{idx}]"
        u = _mapping(raw, where)
        pos = _position(u.get("position"), f"{where}.position")
        serving = u.get("server")
        if serving is None:
            if not servers:
                raise TopologyInvalid(f"{where}.server: no servers to attach to", field=f"{where}.server")
            serving = min(servers, key=lambda s: math.dist(s.position, pos)).id
        elif serving not in server_ids:
            raise TopologyInvalid(f"{where}.server: unknown server {serving!r}", field=f"{where}.server")
        req = u.get("latency_requirement_s")
        users.append(
            UserInfo(
                id=_ident(u.get("id", f"user-{idx}"), f"{where}.id"),
                position=pos,
                server=serving,
                latency_requirement_s=None if req is None else _positive(req, f"{where}.latency_requirement_s"),
            )
        )
    _unique([u.id for u in users], key)
    origin = d.get("origin")
    if origin is not None and (not isinstance(origin, str) or origin not in known):
        raise TopologyInvalid(f"origin: unknown node {origin!r}", field="origin")
    overhead = d.get("overhead_s", DEFAULT_OVERHEAD_S)
    overhead_s = _positive(overhead, "overhead_s", allow_zero=True)
    return Topology(
        name=str(d.get("name", "topology")),
        servers=tuple(servers),
        users=tuple(users),
        links=tuple(links),
        nodes=nodes,
        origin=origin,
        overhead_s=overhead_s,
        latency_requirement_s=_positive(
            d.get("latency_requirement_s", DEFAULT_LATENCY_REQUIREMENT_S), "latency_requirement_s"
        ),
    )


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The YAML-ready mapping that `parse_topology` reads back to an equal topology."""
    servers: list[dict[str, Any]] = []
    for s in topology.servers:
        entry: dict[str, Any] = {
            "id": s.id,
            "position": list(s.position),
            "capacity": s.capacity_bytes,
            "radio": {
                "bandwidth_hz": s.radio.bandwidth_hz,
                "tx_power_dbm": s.radio.tx_power_dbm,
                "noise_dbm_per_hz": s.radio.noise_dbm_per_hz,
                "rayleigh": s.radio.rayleigh,
            },
        }
        if s.port is not None:
            entry["port"] = s.port
        servers.append(entry)
    out: dict[str, Any] = {
        "name": topology.name,
        "overhead_s": topology.overhead_s,
        "latency_requirement_s": topology.latency_requirement_s,
        "servers": servers,
        "nodes": list(topology.nodes),
        "backhaul": [{"a": x.a, "b": x.b, "rate_bps": x.rate_bps} for x in topology.links],
        "users": [
            {"id": u.id, "position": list(u.position), "server": u.server}
            | ({} if u.latency_requirement_s is None else {"latency_requirement_s": u.latency_requirement_s})
            for u in topology.users
        ],
    }
    if topology.origin is not None:
        out["origin"] = topology.origin
    return out


def backhaul_graph(topology: Topology) -> nx.Graph:
    """Undirected graph of servers and nodes; edges carry `rate_bps` and `s_per_byte` (8/rate)."""
    graph = nx.Graph()
    for s in topology.servers:
        graph.add_node(s.id, kind="server")
    for n in topology.nodes:
        graph.add_node(n, kind="node")
    for link in topology.links:
        # Parallel links in the file: keep the faster one.
        if graph.has_edge(link.a, link.b) and graph[link.a][link.b]["rate_bps"] >= link.rate_bps:
            continue
        graph.add_edge(link.a, link.b, rate_bps=link.rate_bps, s_per_byte=8.0 / link.rate_bps)
    return graph


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TopologyInvalid(f"{where} must be a mapping, got {type(value).__name__}", field=where)
    return value


def _list(value: object, where: str, *, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            raise TopologyInvalid(f"{where} is missing", field=where)
        return []
    if not isinstance(value, list):
        raise TopologyInvalid(f"{where} must be a list, got {type(value).__name__}", field=where)
    return value


def _ident(value: object, where: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
        raise TopologyInvalid(f"{where} must be a non-empty id, got {value!r}", field=where)
    return str(value)


def _unique(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise TopologyInvalid(f"{where}: duplicate id {i!r}", field=where)
        seen.add(i)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise TopologyInvalid(f"{where} must be a number, got {value!r}", field=where)
    if isinstance(value, str):
        try:
            value = float(value)  # YAML reads 2e7 without a dot as a string
        except ValueError:
            raise TopologyInvalid(f"{where} must be a number, got {value!r}", field=where) from None
    try:  # an int too big for a float is not finite either
        finite = isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite or not isinstance(value, int | float):
        raise TopologyInvalid(f"{where} must be a finite number, got {value!r}", field=where)
    return float(value)


def _positive(value: object, where: str, *, allow_zero: bool = False) -> float:
    if value is None:
        raise TopologyInvalid(f"{where} is missing", field=where)
    x = _number(value, where)
    if x < 0 or (x == 0 and not allow_zero):
        raise TopologyInvalid(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", field=where)
    return x


def _position(value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TopologyInvalid(f"{where} must be [x, y] in metres, got {value!r}", field=where)
    return (_number(value[0], where), _number(value[1], where))


def _radio(value: object, where: str, base: RadioInfo) -> RadioInfo:
    r = _mapping(value, where)
    unknown = set(r) - {"bandwidth_hz", "tx_power_dbm", "noise_dbm_per_hz", "rayleigh"}
    if unknown:
        raise TopologyInvalid(f"{where}: unknown keys {sorted(map(str, unknown))}", field=where)
    rayleigh = r.get("rayleigh", base.rayleigh)
    if not isinstance(rayleigh, bool):
        raise TopologyInvalid(f"{where}.rayleigh must be true or false", field=f"{where}.rayleigh")
    return RadioInfo(
        bandwidth_hz=_positive(r.get("bandwidth_hz", base.bandwidth_hz), f"{where}.bandwidth_hz"),
        tx_power_dbm=_number(r.get("tx_power_dbm", base.tx_power_dbm), f"{where}.tx_power_dbm"),
        noise_dbm_per_hz=_number(r.get("noise_dbm_per_hz", base.noise_dbm_per_hz), f"{where}.noise_dbm_per_hz"),
        rayleigh=rayleigh,
    )
