"""SIGKILL the origin during publishes and an edge node during plans and fetches; nothing is lost.

The short variant of `bench.reliability_crash` (8 kills per scenario instead of 50, same checks
after every restart): no temporary file left, every block verifies, the catalogue references
no missing block and every refcount is right, every acknowledged publish is complete, and an
acknowledged plan is pinned and held in full again.
"""

from pathlib import Path
from typing import Final

import pytest

from bench.reliability_crash import (
    ScenarioResult,
    run_fetch_crashes,
    run_plan_crashes,
    run_publish_crashes,
)

KILLS: Final = 8


def _assert_survived(result: ScenarioResult) -> None:
    assert result.kills == KILLS
    assert result.damage == 0, result.problems
    assert result.survived == result.kills, result.problems


@pytest.mark.timeout(240)
def test_acknowledged_publishes_survive_the_origin_killed_mid_publish(tmp_path: Path) -> None:
    result = _assert_and_return(run_publish_crashes(tmp_path, kills=KILLS, seed=11))
    # Every interrupted publish goes through when retried against the restarted origin.
    assert result.acknowledged + result.retried_after_recovery == KILLS


@pytest.mark.timeout(240)
def test_a_plan_interrupted_by_a_crash_is_finished_after_the_restart(tmp_path: Path) -> None:
    result = _assert_and_return(run_plan_crashes(tmp_path, kills=KILLS, seed=12))
    assert result.acknowledged == KILLS


@pytest.mark.timeout(240)
def test_devices_never_get_wrong_bytes_from_an_edge_killed_mid_fetch(tmp_path: Path) -> None:
    result = _assert_and_return(run_fetch_crashes(tmp_path, kills=KILLS, seed=13))
    assert result.completed_requests > 0
    assert result.corrupt_responses == 0


def test_regression_restart_keeps_no_pins_of_an_earlier_plan(tmp_path: Path) -> None:
    """policy.json (saved now and then) pinned the plan before the crash: blocks never evictable."""
    import json

    from cachenet.edge.cache import EdgeCache
    from cachenet.edge.config import EdgeSettings

    settings = EdgeSettings(node_id="e", data_dir=tmp_path, capacity_bytes=1 << 20, fsync=False)
    stale, current = "a" * 32, "b" * 32
    cache = EdgeCache(settings)
    cache.policy.pin([stale])
    cache.save_state()  # the periodic save, then a crash before the next plan's pins were saved
    (tmp_path / "plan.json").write_text(json.dumps({"plan_id": "p2", "blocks": [[current, "c" * 64, 10]]}))
    cache.store.close()
    restarted = EdgeCache(settings)
    assert restarted.policy.pinned == frozenset({current})
    restarted.store.close()


def _assert_and_return(result: ScenarioResult) -> ScenarioResult:
    _assert_survived(result)
    return result
