"""Placement solvers: exact optimum vs brute force, approximation bound, feasibility, baselines."""

import itertools
import random

import numpy as np
import pytest

from placement.errors import SolverRefused
from placement.problem import PlacementProblem, check_feasible, make_problem
from placement.scenario import generate_scenario
from placement.solve import SOLVERS, solve
from placement.solvers.optimal import lp_relaxation_bound
from placement.solvers.trimcaching_spec import knapsack_fptas

EPSILON = 0.2


def _random_problem(seed: int, *, shared: bool = True) -> PlacementProblem:
    rng = random.Random(seed)
    n_servers, n_models = rng.randint(1, 3), rng.randint(1, 4)
    shared_blocks = {f"s{j}": rng.randint(5, 40) for j in range(rng.randint(1, 2) if shared else 0)}
    models = {}
    for i in range(n_models):
        blocks = {f"p{i}.{t}": rng.randint(1, 30) for t in range(rng.randint(1, 2))}
        for b, size in shared_blocks.items():
            if rng.random() < 0.6:
                blocks[b] = size
        models[f"m{i}"] = blocks
    servers = {f"n{n}": rng.randint(0, 90) for n in range(n_servers)}
    requests = []
    for _ in range(rng.randint(1, 8)):
        eligible = [s for s in servers if rng.random() < 0.6]
        requests.append((f"m{rng.randrange(n_models)}", rng.random(), eligible))
    return make_problem(servers, models, requests)


def _brute_force(problem: PlacementProblem) -> float:
    """Best hit weight over every per-server model subset that fits (shared blocks once)."""
    n_models = len(problem.models)
    per_server = []
    for capacity in problem.capacities:
        options = []
        for mask in range(1 << n_models):
            picked = [i for i in range(n_models) if mask >> i & 1]
            groups = {g for i in picked for g in problem.model_blocks[i]}
            if sum(int(problem.block_sizes[g]) for g in groups) <= capacity:
                options.append(set(picked))
        per_server.append(options)
    best = 0.0
    for combo in itertools.product(*per_server):
        hit = 0.0
        for r in range(len(problem.request_model)):
            i = int(problem.request_model[r])
            if any(i in combo[n] for n in problem.eligible(r).tolist()):
                hit += float(problem.request_weight[r])
        best = max(best, hit)
    return best / problem.total_weight if problem.total_weight > 0 else 0.0


@pytest.mark.parametrize("seed", range(0, 300, 10))
def test_optimal_matches_brute_force_and_spec_meets_its_bound(seed: int) -> None:
    for s in range(seed, seed + 10):
        problem = _random_problem(s)
        best = _brute_force(problem)
        opt = solve(problem, solver="optimal", time_limit_s=30)
        assert opt.hit_ratio == pytest.approx(best, abs=1e-7), s
        assert opt.info["optimal"]
        spec = solve(problem, solver="trimcaching-spec", epsilon=EPSILON)
        assert spec.hit_ratio >= (1 - EPSILON) / 2 * best - 1e-9, s
        assert lp_relaxation_bound(problem) >= best - 1e-7


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_is_feasible_with_shared_blocks_counted_once(solver: str) -> None:
    for seed in range(60):
        problem = _random_problem(seed)
        placement = solve(problem, solver=solver)
        check_feasible(problem, placement)
        assert set(placement.models) == set(problem.servers)
        assert 0.0 <= placement.hit_ratio <= 1.0


def test_without_shared_blocks_gen_and_independent_agree() -> None:
    for seed in range(80):
        problem = _random_problem(seed, shared=False)
        assert problem.shared_blocks() == ()
        gen = solve(problem, solver="trimcaching-gen")
        ind = solve(problem, solver="independent")
        assert gen.models == ind.models and gen.hit_ratio == ind.hit_ratio


def _lora_family(capacity: int, adapters: int = 10) -> PlacementProblem:
    models = {f"lora-{a}": {"backbone": 100, f"adapter-{a}": 1} for a in range(adapters)}
    requests = [(m, 1.0 / adapters, ["edge"]) for m in models]
    return make_problem({"edge": capacity}, models, requests)


def test_trimcaching_beats_independent_below_the_full_catalogue() -> None:
    full = 10 * 101  # what Independent Caching needs for every model
    for capacity in range(102, full + 1, 7):
        trim = solve(_lora_family(capacity), solver="trimcaching-gen")
        ind = solve(_lora_family(capacity), solver="independent")
        assert trim.hit_ratio > ind.hit_ratio, capacity
    for solver in ("trimcaching-gen", "trimcaching-spec", "independent", "optimal"):
        assert solve(_lora_family(full), solver=solver).hit_ratio == pytest.approx(1.0)


def test_hand_computed_case_where_greedy_gain_misses_the_shared_pair() -> None:
    models = {"a": {"bb": 100, "la": 10}, "b": {"bb": 100, "lb": 10}, "c": {"cc": 105}}
    requests = [("a", 0.3, ["s1"]), ("b", 0.3, ["s1"]), ("c", 0.4, ["s1"])]
    problem = make_problem({"s1": 120}, models, requests)
    assert solve(problem, solver="optimal").hit_ratio == pytest.approx(0.6)
    assert solve(problem, solver="trimcaching-spec").models == {"s1": ("a", "b")}
    assert solve(problem, solver="trimcaching-gen").models == {"s1": ("c",)}
    assert solve(problem, solver="independent").hit_ratio == pytest.approx(0.4)


def test_density_rule_recosts_models_when_their_backbone_arrives() -> None:
    # After "a" brings the backbone, "b" costs 1 byte (density 0.2) and must beat "d"
    # (0.007 / 2 bytes), although b's initial key 0.2 / 101 was below d's.
    models = {
        "a": {"bb": 100, "la": 1},
        "b": {"bb": 100, "lb": 1},
        "c": {"cc": 80},
        "d": {"dd": 2},
    }
    requests = [("a", 0.4, ["s"]), ("b", 0.2, ["s"]), ("c", 0.3, ["s"]), ("d", 0.007, ["s"])]
    problem = make_problem({"s": 103}, models, requests)
    placement = solve(problem, solver="trimcaching-gen-density")
    assert placement.models == {"s": ("a", "b")}
    assert placement.hit_ratio == pytest.approx(0.6 / 0.907)


def test_two_servers_split_the_catalogue() -> None:
    models = {"a": {"x": 10}, "b": {"y": 10}}
    requests = [("a", 0.5, ["s1", "s2"]), ("b", 0.5, ["s1", "s2"])]
    problem = make_problem({"s1": 10, "s2": 10}, models, requests)
    for solver in SOLVERS:
        assert solve(problem, solver=solver).hit_ratio == pytest.approx(1.0), solver


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_empty_and_single_node_cases(solver: str) -> None:
    empty = make_problem({}, {}, [])
    assert solve(empty, solver=solver).hit_ratio == 0.0
    no_requests = make_problem({"s": 10}, {"a": {"x": 1}}, [])
    assert solve(no_requests, solver=solver).models == {"s": ()}
    single = make_problem({"s": 5}, {"a": {"x": 5}, "b": {"y": 6}}, [("a", 0.5, ["s"]), ("b", 0.5, ["s"])])
    assert solve(single, solver=solver).models == {"s": ("a",)}


def test_disconnected_server_only_serves_its_own_users() -> None:
    models = {"a": {"x": 10}, "b": {"y": 10}}
    # s2 is cut off: nobody but its own user can be served from it.
    requests = [("a", 0.6, ["s1"]), ("b", 0.4, ["s2"])]
    problem = make_problem({"s1": 10, "s2": 10}, models, requests)
    for solver in SOLVERS:
        placement = solve(problem, solver=solver)
        assert placement.models == {"s1": ("a",), "s2": ("b",)}, solver


def test_spec_refuses_too_many_shared_blocks() -> None:
    models = {f"m{i}": {f"s{i}": 1, f"s{i + 1}": 1} for i in range(6)}
    problem = make_problem({"n": 10}, models, [("m0", 1.0, ["n"])])
    with pytest.raises(SolverRefused, match="shared block groups"):
        solve(problem, solver="trimcaching-spec", max_shared=3)
    with pytest.raises(SolverRefused, match="epsilon"):
        solve(problem, solver="trimcaching-spec", epsilon=1.5)


def test_solve_rejects_unknown_solver_and_option() -> None:
    problem = make_problem({"n": 10}, {"a": {"x": 1}}, [])
    with pytest.raises(SolverRefused, match="unknown solver"):
        solve(problem, solver="magic")
    with pytest.raises(SolverRefused, match="no option"):
        solve(problem, solver="independent", epsilon=0.1)


def test_knapsack_fptas_is_within_epsilon_of_the_optimum() -> None:
    rng = random.Random(7)
    for _ in range(200):
        m = rng.randint(1, 7)
        values = [rng.random() for _ in range(m)]
        weights = [rng.randint(0, 20) for _ in range(m)]
        capacity = rng.randint(0, 40)
        best = max(
            sum(values[i] for i in range(m) if mask >> i & 1)
            for mask in range(1 << m)
            if sum(weights[i] for i in range(m) if mask >> i & 1) <= capacity
        )
        picked, value = knapsack_fptas(np.array(values), np.array(weights), capacity, epsilon=0.1)
        assert sum(weights[i] for i in picked.tolist()) <= capacity
        assert value >= 0.9 * best - 1e-12


def test_generated_lora_scenario_all_solvers_feasible_and_ordered() -> None:
    scenario = generate_scenario(servers=4, users=12, models=20, backbones=2, seed=5, adapter_blocks="single")
    problem = scenario.to_problem(capacity_bytes=900_000_000)
    results = {s: solve(problem, solver=s) for s in SOLVERS}
    for placement in results.values():
        check_feasible(problem, placement)
    best = results["optimal"].hit_ratio
    assert all(p.hit_ratio <= best + 1e-9 for p in results.values())
    assert results["trimcaching-gen"].hit_ratio > results["independent"].hit_ratio
