"""The local-search improvement phase in the TrimCaching paper's setting, several seeds.

Same scenarios as `bench.placement_paper` (12 servers, 40 users, 100 models; LoRA and CNN
families); the paper's solvers are run unchanged and reported next to their `-ls` variants,
so the gain of the improvement phase is separate from the paper's results. The reference is
the MILP optimum when HiGHS proves it within the time limit, else its bound (upper bound).
Writes bench/results/placement_ls.json and .png. Run: python -m bench.placement_ls [--seeds 0 1 2]
"""

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

from bench.machine import RESULTS_DIR, write_result
from bench.placement_paper import TOPOLOGY
from placement.curves import capacity_curve
from placement.scenario import Scenario, generate_scenario
from placement.topology import load_topology

__all__ = ("main",)
log = logging.getLogger(__name__)

PAPER: Final = ("trimcaching-spec", "trimcaching-gen", "trimcaching-gen-density", "independent")
IMPROVED: Final = ("trimcaching-ls", "trimcaching-gen-ls", "trimcaching-spec-ls")
DEFAULT_SOLVER: Final = "trimcaching-ls"
CAPACITIES: Final = {
    "lora": [int(x * 1e9) for x in (1, 1.5, 2, 2.5, 3, 4, 5)],
    "cnn": [int(x * 1e6) for x in (100, 200, 300, 400, 500, 700, 1000)],
}


def main() -> None:
    """Every solver at every capacity, both families, each seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-limit", type=float, default=10.0, help="MILP time limit per run (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {"lora": [], "cnn": []}
    for family, capacities in CAPACITIES.items():
        for seed in args.seeds:
            base = generate_scenario(
                servers=12, users=40, models=100, backbones=3, seed=seed, family=family,  # type: ignore[arg-type]
                dtype_bytes=2 if family == "lora" else 4,
            )  # fmt: skip
            scenario = Scenario(
                topology=load_topology(TOPOLOGY), models=base.models, model_info=base.model_info,
                demand=base.demand, seed=seed,
            )  # fmt: skip
            problem = scenario.to_problem(capacity_bytes=capacities[0])
            curves = capacity_curve(
                problem,
                capacities,
                (*PAPER, *IMPROVED, "optimal"),
                options={"optimal": {"time_limit_s": args.time_limit}},
            )
            for k, capacity in enumerate(capacities):
                point = {s: curves[s][k] for s in curves}
                opt = point["optimal"]
                reference = opt["hit_ratio"] if opt.get("optimal") else opt.get("bound") or opt["hit_ratio"]
                default = point[DEFAULT_SOLVER]["hit_ratio"]
                row = {
                    "seed": seed,
                    "capacity_bytes": capacity,
                    "solvers": point,
                    "reference": reference,
                    "reference_is": "optimum" if opt.get("optimal") else "milp-bound",
                    "default_over_reference": default / max(reference, 1e-12),
                    "default_over_independent": default / max(point["independent"]["hit_ratio"], 1e-12),
                    "ls_gain_over_gen": default - point["trimcaching-gen"]["hit_ratio"],
                    "ls_gain_over_best_paper": default
                    - max(point[s]["hit_ratio"] or 0.0 for s in PAPER if s != "independent"),
                }
                log.warning(
                    "%s seed %d %.2g B: default %.4f ref %.4f (%s) x%.3f, independent %.4f",
                    family, seed, capacity, default, reference, row["reference_is"],
                    row["default_over_reference"], point["independent"]["hit_ratio"],
                )  # fmt: skip
                results[family].append(row)
    rows = [r for f in results.values() for r in f]
    write_result(
        "placement_ls",
        {
            "default_solver": DEFAULT_SOLVER,
            "milp_time_limit_s": args.time_limit,
            "seeds": args.seeds,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "total_seconds": round(time.perf_counter() - started, 1),
            "summary": {
                "min_default_over_reference": min(r["default_over_reference"] for r in rows),
                "min_default_over_independent": min(r["default_over_independent"] for r in rows),
                "rows_at_or_above_0.97": sum(r["default_over_reference"] >= 0.97 for r in rows),
                "rows": len(rows),
            },
            **results,
        },
    )
    _plot(results, RESULTS_DIR / "placement_ls.png")


def _plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (family, unit, scale) in zip(axes, [("lora", "GB", 1e9), ("cnn", "MB", 1e6)], strict=True):
        rows = results[family]
        caps = sorted({r["capacity_bytes"] for r in rows})
        for k, name in enumerate((*PAPER, *IMPROVED, "optimal")):
            ys = []
            for c in caps:
                vals = [r["solvers"][name]["hit_ratio"] for r in rows if r["capacity_bytes"] == c]
                vals = [v for v in vals if v is not None]
                ys.append(sum(vals) / len(vals) if vals else None)
            if all(y is None for y in ys):
                continue
            ax.plot([c / scale for c in caps], ys, marker="o", ms=3, label=name, color=f"C{k}")
        ax.set_xlabel(f"capacity per edge server ({unit})")
        ax.set_ylabel("cache hit ratio (mean over seeds)")
        ax.set_title(f"{family.upper()}: 12 servers, 40 users, 100 models")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
