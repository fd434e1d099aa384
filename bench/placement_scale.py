"""Runtime and hit ratio of the TrimCaching greedy at growing scale (servers x models).

Sizes 12 x 100, 50 x 1,000 and 200 x 10,000 (users = 2 per server, at least 40), GPT-2
LoRA catalogues (3 backbones, one block per adapter: coalescing makes this exact), 2 GB per
server, area grown with the server count to keep the density of the 12-server setting.
The LP-relaxation bound is computed where the LP is small enough and skipped with a note
otherwise. Run: `python -m bench.placement_scale`.
"""

import logging
import math
import time
from typing import Any, Final

from bench.machine import write_result
from placement.problem import check_feasible
from placement.scenario import generate_scenario
from placement.solve import solve
from placement.solvers.optimal import lp_relaxation_bound

__all__ = ("main",)
log = logging.getLogger(__name__)

SIZES: Final = ((12, 100), (50, 1_000), (200, 10_000))
CAPACITY_BYTES: Final = 2 * 10**9
LP_MAX_VARIABLES: Final = 2_000_000
LP_TIME_LIMIT_S: Final = 240.0


def main() -> None:
    """Run every size and write bench/results/placement_scale.json."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows: list[dict[str, Any]] = []
    for servers, models in SIZES:
        users = max(40, 2 * servers)
        start = time.perf_counter()
        scenario = generate_scenario(
            servers=servers, users=users, models=models, backbones=3, seed=0,
            capacity_bytes=CAPACITY_BYTES, adapter_blocks="single",
            area_m=1000.0 * math.sqrt(servers / 12),
        )  # fmt: skip
        problem = scenario.to_problem()
        row: dict[str, Any] = {
            "servers": servers, "models": models, "users": users,
            "build_s": time.perf_counter() - start, "problem": problem.describe(), "solvers": {},
        }  # fmt: skip
        for name in ("trimcaching-gen", "trimcaching-gen-density", "independent"):
            placement = solve(problem, solver=name)
            check_feasible(problem, placement)
            row["solvers"][name] = {
                "hit_ratio": placement.hit_ratio,
                "runtime_s": placement.runtime_s,
            }
        variables = len(problem.servers) * (len(problem.models) + len(problem.block_members))
        variables += len(problem.request_model)
        if variables <= LP_MAX_VARIABLES:
            start = time.perf_counter()
            row["lp_bound"] = lp_relaxation_bound(problem, time_limit_s=LP_TIME_LIMIT_S)
            row["lp_runtime_s"] = time.perf_counter() - start
        else:
            row["lp_bound"] = None
            row["lp_note"] = f"skipped: {variables} LP variables > {LP_MAX_VARIABLES}"
        log.warning("%s", row)
        rows.append(row)
    write_result("placement_scale", {"capacity_bytes": CAPACITY_BYTES, "sizes": rows})


if __name__ == "__main__":
    main()
