"""The controller's Prometheus metrics, read from its state at scrape time (nothing to keep in step)."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from placement.controller import Controller

__all__ = ("controller_registry",)


class _ControllerCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        last = c.runs[-1] if c.runs else None
        nodes = GaugeMetricFamily("cachenet_controller_nodes", "edge nodes in the topology")
        nodes.add_metric([], len(c.topology.servers))
        yield nodes
        runs = GaugeMetricFamily("cachenet_controller_runs", "placement runs kept in memory since start")
        runs.add_metric([], len(c.runs))
        yield runs
        unsaved = GaugeMetricFamily("cachenet_controller_unsaved_runs", "runs the origin has not stored yet")
        unsaved.add_metric([], len(c.unsaved))
        yield unsaved
        hit = GaugeMetricFamily("cachenet_controller_last_hit_ratio", "expected hit ratio of the last run")
        solve = GaugeMetricFamily("cachenet_controller_last_solve_seconds", "solver time of the last run")
        moved = GaugeMetricFamily("cachenet_controller_last_bytes_to_move", "bytes the last run asked nodes to fetch")
        pushed = GaugeMetricFamily(
            "cachenet_controller_last_push_ok", "1 when the last run's plan reached the node", labels=["node"]
        )
        planned = GaugeMetricFamily(
            "cachenet_controller_planned_bytes", "bytes the current plan places on a node", labels=["node"]
        )
        if last is not None:
            hit.add_metric([], last.hit_ratio)
            solve.add_metric([], last.runtime_s)
            moved.add_metric([], sum(n.get("bytes_to_fetch", 0) for n in last.nodes.values()))
            for node, n in sorted(last.nodes.items()):
                pushed.add_metric([node], 1.0 if n.get("pushed") else 0.0)
        for node, refs in sorted(c.plans.items()):
            planned.add_metric([node], sum(r.size for r in refs))
        yield from (hit, solve, moved, pushed, planned)


def controller_registry(controller: Controller) -> CollectorRegistry:
    """A registry whose metrics describe `controller` as it is when scraped."""
    registry = CollectorRegistry()
    registry.register(_ControllerCollector(controller))
    return registry
