"""The placement problem: construction, hit ratio, storage with shared blocks, feasibility."""

import numpy as np
import pytest

from placement.errors import PlacementInfeasible, ScenarioInvalid
from placement.problem import (
    Placement,
    build_problem,
    check_feasible,
    hit_ratio,
    make_problem,
    storage_used,
)
from placement.topology import parse_topology

MODELS = {"a": {"bb": 100, "la": 10}, "b": {"bb": 100, "lb": 10}, "c": {"cc": 105}}


def _placement(models: dict[str, tuple[str, ...]], blocks: dict[str, tuple[str, ...]]) -> Placement:
    return Placement(models=models, blocks=blocks, hit_ratio=0.0, solver="hand", runtime_s=0.0)


def test_make_problem_coalesces_blocks_and_merges_requests() -> None:
    models = {"a": {"x": 1, "y": 2, "p": 3}, "b": {"x": 1, "y": 2, "q": 4}}
    requests = [
        ("a", 0.25, ["s1"]),
        ("a", 0.25, ["s1"]),
        ("b", 0.5, ["s1", "s2"]),
        ("b", 0.0, ["s2"]),
    ]
    problem = make_problem({"s1": 10, "s2": 10}, models, requests)
    assert problem.block_members == (("x", "y"), ("p",), ("q",))
    assert problem.block_sizes.tolist() == [3, 3, 4]
    assert problem.model_sizes.tolist() == [6, 7]
    assert problem.request_weight.tolist() == [0.5, 0.5]
    assert problem.shared_blocks() == (0,)
    assert problem.eligible(1).tolist() == [0, 1]


def test_hit_ratio_counts_unservable_requests_in_the_total() -> None:
    requests = [("a", 0.3, ["s1"]), ("b", 0.3, ["s1"]), ("c", 0.3, ["s1"]), ("c", 0.1, [])]
    problem = make_problem({"s1": 120}, MODELS, requests)
    both = _placement({"s1": ("a", "b")}, {"s1": ("bb", "la", "lb")})
    assert hit_ratio(problem, both) == pytest.approx(0.6)
    assert problem.total_weight == pytest.approx(1.0)


def test_storage_counts_a_shared_block_once() -> None:
    problem = make_problem({"s1": 120}, MODELS, [("a", 1.0, ["s1"])])
    both = _placement({"s1": ("a", "b")}, {"s1": ("bb", "la", "lb")})
    assert storage_used(problem, both) == {"s1": 120}
    check_feasible(problem, both)


def test_check_feasible_rejects_over_capacity() -> None:
    problem = make_problem({"s1": 119}, MODELS, [("a", 1.0, ["s1"])])
    both = _placement({"s1": ("a", "b")}, {"s1": ("bb", "la", "lb")})
    with pytest.raises(PlacementInfeasible, match="over its capacity") as e:
        check_feasible(problem, both)
    assert e.value.attrs["node_id"] == "s1"


def test_check_feasible_rejects_missing_block_and_unknown_ids() -> None:
    problem = make_problem({"s1": 500}, MODELS, [("a", 1.0, ["s1"])])
    with pytest.raises(PlacementInfeasible, match="without block"):
        check_feasible(problem, _placement({"s1": ("a",)}, {"s1": ("la",)}))
    with pytest.raises(PlacementInfeasible, match="unknown model"):
        check_feasible(problem, _placement({"s1": ("zz",)}, {"s1": ()}))
    with pytest.raises(PlacementInfeasible, match="unknown server"):
        check_feasible(problem, _placement({"s9": ()}, {}))


def test_make_problem_rejects_bad_input() -> None:
    with pytest.raises(ScenarioInvalid, match="two sizes"):
        make_problem({"s": 1}, {"a": {"x": 1}, "b": {"x": 2}}, [])
    with pytest.raises(ScenarioInvalid, match="unknown model"):
        make_problem({"s": 1}, {"a": {"x": 1}}, [("b", 1.0, ["s"])])
    with pytest.raises(ScenarioInvalid, match="unknown server"):
        make_problem({"s": 1}, {"a": {"x": 1}}, [("a", 1.0, ["t"])])
    with pytest.raises(ScenarioInvalid, match="capacity"):
        make_problem({"s": -1}, {"a": {"x": 1}}, [])


def test_empty_problem_has_zero_hit_ratio() -> None:
    problem = make_problem({}, {}, [])
    assert hit_ratio(problem, _placement({}, {})) == 0.0
    assert problem.describe()["requests"] == 0


def _two_server_topology(rate_bps: float) -> dict[str, object]:
    return {
        "overhead_s": 0.5,
        "radio": {"bandwidth_hz": 1e6, "tx_power_dbm": 30, "noise_dbm_per_hz": -174},
        "servers": [
            {"id": "e1", "position": [0, 0], "capacity": 1000},
            {"id": "e2", "position": [500, 0], "capacity": 1000},
        ],
        "backhaul": [{"a": "e1", "b": "e2", "rate_bps": rate_bps}],
        "users": [{"id": "u", "position": [100, 0], "server": "e1"}],
    }


def test_build_problem_eligibility_matches_hand_computed_latency() -> None:
    topology = parse_topology(_two_server_topology(rate_bps=8e3))
    # path loss at 0.1 km = 128.1 - 37.6 = 90.5 dB; SNR = 30 - 90.5 - (-174 + 60) = 53.5 dB
    rate = 1e6 * np.log2(1 + 10**5.35)
    size = 1000
    t_local = 8 * size / rate + 0.5
    t_remote = t_local + size * 8 / 8e3  # one extra second over the backhaul
    models = {"m": {"blk": size}}
    local_only = build_problem(topology, models, {("u", "m"): 1.0}, latency_requirements=t_local + 0.5)
    assert local_only.eligible(0).tolist() == [0]
    both = build_problem(topology, models, {("u", "m"): 1.0}, latency_requirements=t_remote)
    assert both.eligible(0).tolist() == [0, 1]
    none = build_problem(topology, models, {("u", "m"): 1.0}, latency_requirements=t_local * 0.99)
    assert len(none.request_model) == 0 and none.total_weight == 1.0


def test_build_problem_with_disconnected_backhaul_serves_locally_only() -> None:
    data = _two_server_topology(rate_bps=8e3)
    data["backhaul"] = []
    topology = parse_topology(data)
    problem = build_problem(topology, {"m": {"blk": 10}}, {("u", "m"): 1.0}, latency_requirements=100.0)
    assert problem.eligible(0).tolist() == [0]


def test_build_problem_rejects_unknown_demand_keys() -> None:
    topology = parse_topology(_two_server_topology(rate_bps=8e3))
    with pytest.raises(ScenarioInvalid, match="unknown user"):
        build_problem(topology, {"m": {"blk": 10}}, {("nobody", "m"): 1.0})
    with pytest.raises(ScenarioInvalid, match="unknown model"):
        build_problem(topology, {"m": {"blk": 10}}, {("u", "zz"): 1.0})
