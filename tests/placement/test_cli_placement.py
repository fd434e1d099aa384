"""The `cachenet placement generate / solve` commands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cachenet.cli import main
from placement.scenario import read_scenario


def test_generate_then_solve_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.yaml"
    argv = ["placement", "generate", "--servers", "3", "--users", "6", "--models", "6",
            "--backbones", "2", "--capacity", "1GB", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    scenario = read_scenario(out)
    assert len(scenario.topology.servers) == 3 and len(scenario.models) == 6
    capsys.readouterr()
    assert main(["placement", "solve", "--scenario", str(out), "--solver", "trimcaching-spec",
                 "--epsilon", "0.2", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["solver"] == "trimcaching-spec"
    assert 0.0 <= result["hit_ratio"] <= 1.0
    assert set(result["models"]) == {"edge-1", "edge-2", "edge-3"}
    assert all(used <= 10**9 for used in result["storage_used"].values())


def test_solve_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["placement", "solve", "--scenario", str(missing), "--solver", "optimal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read scenario" in err[0]


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    gen = [sys.executable, "-m", "cachenet", "placement", "generate", "--servers", "2",
           "--users", "4", "--models", "4", "--out", str(out)]  # fmt: skip
    subprocess.run(gen, check=True, capture_output=True, timeout=60)
    solved = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachenet",
            "placement",
            "solve",
            "--scenario",
            str(out),
            "--solver",
            "optimal",
            "--time-limit",
            "10",
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "hit ratio" in solved.stdout


def test_the_cli_knows_every_solver_without_importing_them() -> None:
    from placement.cli import SOLVER_NAMES
    from placement.solve import SOLVERS

    assert SOLVER_NAMES == tuple(sorted(SOLVERS))
