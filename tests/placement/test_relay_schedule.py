"""Delivery schedules along relay trees: each node's parents per block, bytes per link (issue #22)."""

import networkx as nx

from placement.delivery import delivery_schedule


def _graph(*links: tuple[str, str, float]) -> nx.Graph:
    g = nx.Graph()
    for a, b, rate in links:
        g.add_edge(a, b, rate_bps=rate, s_per_byte=8.0 / rate)
    return g


def test_a_block_for_every_node_crosses_each_tree_link_once_and_nodes_fetch_from_their_parents() -> None:
    g = _graph(("origin", "e1", 1e9), ("e1", "e2", 1e8), ("e1", "e3", 1e8), ("e2", "e4", 5e7))
    nodes = ("e1", "e2", "e3", "e4")
    plan = delivery_schedule(g, "origin", needs={n: ["x"] for n in nodes}, block_sizes={"x": 100}, relays=set(nodes))
    assert plan.parents == {"e1": {"x": ()}, "e2": {"x": ("e1",)}, "e3": {"x": ("e1",)}, "e4": {"x": ("e2", "e1")}}
    assert plan.planned == {("e1", "origin"): 100, ("e1", "e2"): 100, ("e1", "e3"): 100, ("e2", "e4"): 100}
    assert plan.order[0] == "e1" and plan.order.index("e2") < plan.order.index("e4")
    assert plan.rates[("e4", "e2")] == 5e7 / 8 and plan.rates[("e4", "origin")] == 5e7 / 8
    assert plan.rates[("e2", "e1")] == 1e8 / 8


def test_a_node_on_the_tree_that_does_not_need_the_block_relays_it() -> None:
    g = _graph(("origin", "e1", 1e9), ("e1", "e2", 1e9), ("e1", "e3", 1e9))
    plan = delivery_schedule(
        g, "origin", needs={"e2": ["y"], "e3": ["y"]}, block_sizes={"y": 10}, relays={"e1", "e2", "e3"}
    )
    assert plan.parents["e2"]["y"] == ("e1",) and plan.parents["e3"]["y"] == ("e1",)
    assert plan.parents["e1"]["y"] == ()  # e1 fetches it from the origin once, for both
    assert plan.planned[("e1", "origin")] == 10
