"""Backhaul delivery of a new plan: relay each block along a tree instead of one path per server.

For every block, the origin's attachment node and the servers that need the block are the
terminals. With relaying, the block crosses each link of a tree spanning the terminals once
(`method="steiner"`: networkx's metric-closure 2-approximation of the Steiner tree, weighted
by seconds per byte; `method="shortest-path"`: the union of shortest paths from the origin).
Without relaying, each server fetches the block from the origin over its own shortest path,
so a link carries the block once per server behind it. Pure: no I/O.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx
from networkx.algorithms.approximation import steiner_tree

from placement.errors import SolverRefused, Unreachable

__all__ = ("Link", "RelayReport", "block_holders", "relay_plan", "tree_links")

Link = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RelayReport:
    """Bytes per backhaul link (ends sorted) with and without relaying, and their totals."""

    with_relay: Mapping[Link, int]
    without_relay: Mapping[Link, int]
    total_with_relay: int = field(init=False)
    total_without_relay: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_with_relay", sum(self.with_relay.values()))
        object.__setattr__(self, "total_without_relay", sum(self.without_relay.values()))


def block_holders(
    graph: nx.Graph, origin: str, needs: Mapping[str, Iterable[str]], *, weight: str = "s_per_byte"
) -> tuple[dict[str, set[str]], dict[str, float], dict[str, list[str]]]:
    """Block id -> servers that need it, and the shortest distances and paths from `origin`.

    Raises:
        Unreachable: the origin or a server is not in the graph or not connected to the origin.
    """
    if origin not in graph:
        raise Unreachable(f"origin node {origin!r} is not in the backhaul graph", node_id=origin)
    holders: dict[str, set[str]] = defaultdict(set)
    for server, blocks in needs.items():
        if server not in graph:
            raise Unreachable(f"server {server!r} is not in the backhaul graph", node_id=server)
        for block in blocks:
            holders[block].add(server)
    dist, paths = nx.single_source_dijkstra(graph, origin, weight=weight)
    for server in needs:
        if server not in paths:
            raise Unreachable(f"server {server!r} has no backhaul path to the origin at {origin!r}", node_id=server)
    return holders, dist, paths


def relay_plan(
    graph: nx.Graph,
    origin: str,
    *,
    needs: Mapping[str, Iterable[str]],
    block_sizes: Mapping[str, int],
    method: Literal["steiner", "shortest-path"] = "steiner",
    weight: str = "s_per_byte",
) -> RelayReport:
    """Bytes per link to deliver `needs` (server -> block ids) from `origin`.

    Raises:
        Unreachable: the origin or a server is not in the graph or not connected to the origin.
    """
    if method not in ("steiner", "shortest-path"):
        raise SolverRefused(f"unknown relay method {method!r}; use 'steiner' or 'shortest-path'")
    holders, _, paths = block_holders(graph, origin, needs, weight=weight)
    with_relay: dict[Link, int] = defaultdict(int)
    without_relay: dict[Link, int] = defaultdict(int)
    trees: dict[frozenset[str], list[Link]] = {}
    for block, servers in holders.items():
        size = int(block_sizes[block])
        for server in servers:
            for link in _path_links(paths[server]):
                without_relay[link] += size
        key = frozenset(servers)
        if key not in trees:
            trees[key] = tree_links(graph, origin, servers, paths, method, weight)
        for link in trees[key]:
            with_relay[link] += size
    return RelayReport(with_relay=dict(with_relay), without_relay=dict(without_relay))


def tree_links(
    graph: nx.Graph,
    origin: str,
    servers: set[str],
    paths: Mapping[str, list[str]],
    method: str,
    weight: str,
) -> list[Link]:
    """The links of the tree that carries a block from `origin` to `servers` (ends sorted)."""
    terminals = sorted(servers | {origin})
    if len(terminals) == 1:
        return []
    if method == "steiner":
        tree = steiner_tree(graph, terminals, weight=weight, method="mehlhorn")
        return sorted(_link(u, v) for u, v in tree.edges())
    return sorted({link for s in servers for link in _path_links(paths[s])})


def _path_links(path: list[str]) -> list[Link]:
    return [_link(u, v) for u, v in zip(path, path[1:], strict=False)]


def _link(u: str, v: str) -> Link:
    return (u, v) if u <= v else (v, u)
