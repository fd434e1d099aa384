"""Hit ratio vs capacity in the TrimCaching paper's setting: 12 edge servers, 40 users.

Two catalogues (assumptions labelled in the JSON):
- LoRA: 100 GPT-2 LoRA adapters (downstream tasks) over GPT-2 small / medium / large (real
  tensor shapes, fp16), adapters on attn.c_attn with ranks giving 300 kB .. 30 MB, Zipf 0.8;
  capacity swept 1 .. 5 GB.
- CNN: 100 task models over ResNet-18/50/101-style backbones (fp32) sharing frozen bottom
  units up to a random depth; capacity swept 100 MB .. 1 GB.
Solvers: trimcaching-spec (eps 0.1), trimcaching-gen (gain and density rules), independent,
optimal (HiGHS MILP with a time limit). Run: `python -m bench.placement_paper`.
"""

import argparse
import logging
from pathlib import Path
from typing import Any, Final

from bench.machine import RESULTS_DIR, write_result
from placement.errors import SolverRefused
from placement.problem import check_feasible
from placement.scenario import Scenario, generate_scenario
from placement.solve import solve
from placement.topology import load_topology

__all__ = ("main", "run_setting")
log = logging.getLogger(__name__)

TOPOLOGY: Final = Path(__file__).parents[1] / "deploy" / "topologies" / "paper-12.yaml"
SOLVERS: Final = (
    "trimcaching-spec",
    "trimcaching-gen",
    "trimcaching-gen-density",
    "independent",
    "optimal",
)
ASSUMPTIONS: Final = {
    "topology": "deploy/topologies/paper-12.yaml (positions, radio, backhaul assumed)",
    "lora": "GPT-2 small/medium/large fp16 backbones, 100 LoRA adapters round-robin over them, "
    "rank chosen for a log-uniform size in 300 kB..30 MB, one block per tensor",
    "cnn": "ResNet-18/50/101-style fp32 backbones, 100 task models sharing the first d units "
    "(d uniform), own upper units and a 10..1000-class head; nested sharing gives ~40 shared "
    "block groups, so trimcaching-spec (2^S subsets) refuses it",
    "demand": "global Zipf popularity, exponent 0.8, equal for the 40 users",
    "latency_requirement_s": "uniform in [2, 12] s per model",
    "seed": 0,
}


def run_setting(family: str, capacities: list[int], *, time_limit_s: float, seed: int) -> list[dict[str, Any]]:
    """Every solver at every capacity for one catalogue family."""
    base = generate_scenario(
        servers=12, users=40, models=100, backbones=3, seed=seed, family=family,  # type: ignore[arg-type]
        dtype_bytes=2 if family == "lora" else 4,
    )  # fmt: skip
    scenario = Scenario(
        topology=load_topology(TOPOLOGY), models=base.models, model_info=base.model_info,
        demand=base.demand, seed=seed,
    )  # fmt: skip
    rows = []
    for capacity in capacities:
        problem = scenario.to_problem(capacity_bytes=capacity)
        row: dict[str, Any] = {
            "capacity_bytes": capacity,
            "problem": problem.describe(),
            "solvers": {},
        }
        for name in SOLVERS:
            options = {"time_limit_s": time_limit_s} if name == "optimal" else {}
            try:
                placement = solve(problem, solver=name, **options)
            except SolverRefused as e:
                row["solvers"][name] = {"hit_ratio": None, "refused": e.message}
                continue
            check_feasible(problem, placement)
            row["solvers"][name] = {
                "hit_ratio": placement.hit_ratio,
                "runtime_s": placement.runtime_s,
                **{k: v for k, v in placement.info.items() if k in ("gap", "bound", "optimal")},
            }
        s = row["solvers"]
        row["trim_over_independent"] = s["trimcaching-gen"]["hit_ratio"] / max(s["independent"]["hit_ratio"], 1e-12)
        row["gen_over_optimal"] = s["trimcaching-gen"]["hit_ratio"] / max(s["optimal"]["hit_ratio"], 1e-12)
        log.warning("%s %.2f GB: %s", family, capacity / 1e9, {k: v["hit_ratio"] for k, v in s.items()})
        rows.append(row)
    return rows


def main() -> None:
    """Run both settings, write JSON and the PNG plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=20.0, help="MILP time limit per run (s)")
    parser.add_argument("--seed", type=int, default=0, help="scenario seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    lora_caps = [int(x * 1e9) for x in (1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)]
    cnn_caps = [int(x * 1e6) for x in (100, 200, 300, 400, 500, 700, 1000)]
    results = {
        "lora": run_setting("lora", lora_caps, time_limit_s=args.time_limit, seed=args.seed),
        "cnn": run_setting("cnn", cnn_caps, time_limit_s=args.time_limit, seed=args.seed),
    }
    write_result(
        "placement_paper",
        {"assumptions": ASSUMPTIONS, "milp_time_limit_s": args.time_limit, **results},
    )
    _plot(results, RESULTS_DIR / "placement_paper.png")


def _plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (family, unit, scale) in zip(axes, [("lora", "GB", 1e9), ("cnn", "MB", 1e6)], strict=True):
        rows = results[family]
        x = [r["capacity_bytes"] / scale for r in rows]
        for idx, name in enumerate(SOLVERS):
            y = [r["solvers"][name]["hit_ratio"] for r in rows]
            if all(v is None for v in y):
                continue  # the solver refused this catalogue (e.g. too many shared blocks)
            ax.plot(x, y, marker="o", label=name, color=f"C{idx}")
        ax.set_xlabel(f"capacity per edge server ({unit})")
        ax.set_ylabel("cache hit ratio")
        ax.set_title(f"{family.upper()}: 12 servers, 40 users, 100 models")
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
