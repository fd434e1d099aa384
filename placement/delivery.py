"""A plan's delivery schedule along relay trees: which node fetches each block from which (issue #22).

For every block, the origin and the servers that need it are the terminals of a tree over the
backhaul (`placement.relay`'s trees: Steiner 2-approximation weighted by seconds per byte, or
the union of shortest paths). Rooted at the origin, each server of the tree fetches the block
from its nearest ancestor that is a server (a node that needs the block, or one the tree passes
through, which relays it without planning to keep it), the further ancestors next, the origin
last. So the block crosses each tree link once. Pure: no I/O.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

from placement.relay import Link, block_holders, tree_links

__all__ = ("DeliverySchedulePlan", "delivery_schedule", "path_links")


@dataclass(frozen=True, slots=True)
class DeliverySchedulePlan:
    """Per server: block -> parent servers (nearest first; the origin is implied last); bytes per link.

    `rates[(server, source)]` is the bottleneck rate (bytes/s) of the path between a server and a
    source it fetches from (`source` may be the origin); `order` lists servers parents first.
    """

    parents: Mapping[str, Mapping[str, tuple[str, ...]]]
    planned: Mapping[Link, int]
    rates: Mapping[tuple[str, str], float]
    order: tuple[str, ...]
    total_planned: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_planned", sum(self.planned.values()))


def delivery_schedule(
    graph: nx.Graph,
    origin: str,
    *,
    needs: Mapping[str, Iterable[str]],
    block_sizes: Mapping[str, int],
    relays: Set[str],
    method: Literal["steiner", "shortest-path"] = "steiner",
    weight: str = "s_per_byte",
) -> DeliverySchedulePlan:
    """Schedule `needs` (server -> block ids) from `origin`; `relays` are the servers that can relay.

    Complexity: one tree per distinct set of servers needing a block (blocks of a shared backbone
    share one), each O(|terminals| * (E + V log V)) for the Steiner approximation.

    Raises:
        Unreachable: the origin or a server is not in the graph or not connected to the origin.
    """
    holders, dist, paths = block_holders(graph, origin, needs, weight=weight)
    parents: dict[str, dict[str, tuple[str, ...]]] = defaultdict(dict)
    planned: dict[Link, int] = defaultdict(int)
    pairs: set[tuple[str, str]] = set()
    trees: dict[frozenset[str], dict[str, tuple[str, ...]]] = {}
    tree_edges: dict[frozenset[str], list[Link]] = {}
    for block, servers in holders.items():
        key = frozenset(servers)
        if key not in trees:
            links = tree_links(graph, origin, set(servers), paths, method, weight)
            tree_edges[key] = links
            trees[key] = _ancestors(links, origin, relays)
        for server, chain in trees[key].items():
            parents[server][block] = chain
            pairs.add((server, chain[0] if chain else origin))
            pairs.update((server, p) for p in chain[1:])
            pairs.add((server, origin))
        for link in tree_edges[key]:
            planned[link] += int(block_sizes[block])
    rates = {(s, src): _bottleneck(graph, s, src, weight) for s, src in pairs}
    order = tuple(sorted(parents, key=lambda s: (dist.get(s, float("inf")), s)))
    return DeliverySchedulePlan(
        parents={s: dict(b) for s, b in parents.items()}, planned=dict(planned), rates=rates, order=order
    )


def path_links(graph: nx.Graph, a: str, b: str, *, weight: str = "s_per_byte") -> list[Link]:
    """The links of the cheapest path between two nodes (empty when there is none)."""
    try:
        path = nx.shortest_path(graph, a, b, weight=weight)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return []
    return [(u, v) if u <= v else (v, u) for u, v in zip(path, path[1:], strict=False)]


def _ancestors(links: list[Link], origin: str, relays: Set[str]) -> dict[str, tuple[str, ...]]:
    """For each relay in the tree rooted at `origin`: its relay ancestors, nearest first."""
    if not links:
        return {}
    tree = nx.Graph(links)
    up = dict(nx.bfs_predecessors(tree, origin))
    out: dict[str, tuple[str, ...]] = {}
    for node in up:
        if node not in relays:
            continue
        chain: list[str] = []
        x = up[node]
        while x != origin:
            if x in relays:
                chain.append(x)
            x = up[x]
        out[node] = tuple(chain)
    return out


def _bottleneck(graph: nx.Graph, a: str, b: str, weight: str) -> float:
    """The lowest rate (bytes/s) on the cheapest path between a and b."""
    path = nx.shortest_path(graph, a, b, weight=weight)
    return min(float(graph[u][v]["rate_bps"]) / 8.0 for u, v in zip(path, path[1:], strict=False))
