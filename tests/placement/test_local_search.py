"""The improvement phase after the greedy: never worse, always within capacity, finds swaps."""

import random

import pytest

from placement.problem import PlacementProblem, check_feasible, make_placement, make_problem
from placement.scenario import generate_scenario
from placement.solve import solve
from placement.solvers.local_search import improve
from placement.solvers.trimcaching_gen import greedy_placement


def _random_problem(seed: int) -> PlacementProblem:
    rng = random.Random(seed)
    shared = {f"base{j}": rng.randint(10, 60) for j in range(rng.randint(1, 3))}
    models = {}
    for i in range(rng.randint(3, 12)):
        blocks = {f"own{i}.{t}": rng.randint(1, 40) for t in range(rng.randint(1, 3))}
        for b, size in shared.items():
            if rng.random() < 0.5:
                blocks[b] = size
        models[f"m{i}"] = blocks
    servers = {f"n{n}": rng.randint(20, 150) for n in range(rng.randint(1, 4))}
    requests = [
        (f"m{rng.randrange(len(models))}", rng.random(), [s for s in servers if rng.random() < 0.6])
        for _ in range(rng.randint(5, 30))
    ]
    return make_problem(servers, models, requests)


@pytest.mark.parametrize("method", ["gain", "density"])
def test_local_search_is_never_worse_than_the_greedy_and_respects_capacities(method: str) -> None:
    improved_somewhere = False
    for seed in range(80):
        problem = _random_problem(seed)
        chosen, _ = greedy_placement(problem, method=method)  # type: ignore[arg-type]
        before = make_placement(problem, chosen, solver="greedy", runtime_s=0.0)
        better, info = improve(problem, chosen, time_budget_s=5.0)
        after = make_placement(problem, better, solver="ls", runtime_s=0.0)
        check_feasible(problem, after)
        assert after.hit_ratio >= before.hit_ratio - 1e-12, seed
        assert info["ls_gain"] == pytest.approx(after.hit_ratio - before.hit_ratio, abs=1e-9)
        improved_somewhere |= after.hit_ratio > before.hit_ratio + 1e-9
    assert improved_somewhere


def test_a_swap_replaces_a_model_by_a_more_requested_one_that_does_not_fit_beside_it() -> None:
    problem = make_problem(
        {"s": 10},
        {"x": {"bx": 10}, "y": {"by": 6}, "z": {"bz": 4}},
        [("x", 1.0, ["s"]), ("y", 0.8, ["s"]), ("z", 0.7, ["s"])],
    )
    start = [{0}]  # x alone: 1.0 of 2.5; y + z: 1.5
    better, info = improve(problem, start, time_budget_s=5.0)
    assert [problem.models[i] for i in sorted(better[0])] == ["y", "z"]
    assert info["ls_moves"] >= 1 and info["ls_gain"] == pytest.approx(0.5 / 2.5)


def test_a_shared_backbone_is_not_freed_while_a_kept_model_still_uses_it() -> None:
    models = {
        "a": {"base": 50, "a1": 10},
        "b": {"base": 50, "b1": 10},
        "c": {"c1": 35},
    }
    problem = make_problem({"s": 100}, models, [("a", 0.5, ["s"]), ("b", 0.4, ["s"]), ("c", 0.45, ["s"])])
    better, _ = improve(problem, [{0, 1}], time_budget_s=5.0)
    placement = make_placement(problem, better, solver="ls", runtime_s=0.0)
    check_feasible(problem, placement)  # c fits only by dropping b's own block, never the base
    assert placement.hit_ratio >= (0.5 + 0.45) / 1.35 - 1e-9


@pytest.mark.parametrize("solver", ["trimcaching-ls", "trimcaching-gen-ls", "trimcaching-spec-ls"])
def test_improved_solvers_beat_or_match_their_greedy_on_a_generated_catalogue(solver: str) -> None:
    scenario = generate_scenario(servers=4, users=12, models=30, backbones=3, seed=3, family="lora")
    for capacity in (400_000_000, 1_000_000_000):
        problem = scenario.to_problem(capacity_bytes=capacity)
        placement = solve(problem, solver=solver)
        check_feasible(problem, placement)
        greedy = solve(problem, solver=solver.removesuffix("-ls") if solver != "trimcaching-ls" else "trimcaching-gen")
        assert placement.hit_ratio >= greedy.hit_ratio - 1e-12
        assert placement.hit_ratio > solve(problem, solver="independent").hit_ratio
