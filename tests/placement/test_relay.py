"""Backhaul relaying of a plan's blocks: tree vs one path per server, and unreachable nodes."""

import networkx as nx
import pytest

from placement.errors import SolverRefused, Unreachable
from placement.relay import relay_plan


def _star() -> nx.Graph:
    graph = nx.Graph()
    for u, v in [("origin", "core"), ("core", "e1"), ("core", "e2"), ("e2", "e3")]:
        graph.add_edge(u, v, s_per_byte=1.0)
    return graph


@pytest.mark.parametrize("method", ["steiner", "shortest-path"])
def test_shared_block_crosses_each_link_once_with_relaying(method: str) -> None:
    report = relay_plan(
        _star(),
        "origin",
        needs={"e1": ["bb", "l1"], "e2": ["bb"], "e3": ["bb", "l3"]},
        block_sizes={"bb": 100, "l1": 1, "l3": 3},
        method=method,  # type: ignore[arg-type]
    )
    assert report.with_relay == {
        ("core", "origin"): 104,
        ("core", "e1"): 101,
        ("core", "e2"): 103,
        ("e2", "e3"): 103,
    }
    assert report.without_relay[("core", "origin")] == 3 * 100 + 1 + 3
    assert report.without_relay[("core", "e2")] == 2 * 100 + 3
    assert report.total_with_relay == 411
    assert report.total_without_relay == 304 + 101 + 203 + 103


def test_block_needed_at_the_origin_node_moves_nothing() -> None:
    report = relay_plan(_star(), "core", needs={"core": ["x"]}, block_sizes={"x": 5})
    assert report.total_with_relay == 0 and report.total_without_relay == 0


def test_unreachable_server_and_unknown_origin_are_errors() -> None:
    graph = _star()
    graph.add_node("island")
    with pytest.raises(Unreachable, match="island"):
        relay_plan(graph, "origin", needs={"island": ["x"]}, block_sizes={"x": 1})
    with pytest.raises(Unreachable, match="nowhere"):
        relay_plan(graph, "nowhere", needs={}, block_sizes={})
    with pytest.raises(SolverRefused, match="relay method"):
        relay_plan(graph, "origin", needs={}, block_sizes={}, method="flood")  # type: ignore[arg-type]
