"""The batch planner: what goes by multicast, to which group, and what the plan is expected to cost."""

import pytest

from cachenet.errors import BadInput
from cachenet.multicast.plan import EXACT_MAX_CLASSES, MemberDemand, plan_delivery

MB = 1_000_000
SIZES = {**{f"base{i}": 10 * MB for i in range(9)}, **{f"lora{i}": MB // 10 for i in range(40)}}
BASE = tuple(f"base{i}" for i in range(9))


def _members(n: int, rates: dict[int, float] | None = None) -> list[MemberDemand]:
    rates = rates or {}
    return [MemberDemand(f"m{i}", (*BASE, f"lora{i}"), rates.get(i)) for i in range(n)]


def test_shared_blocks_go_to_one_group_and_each_adapter_by_unicast() -> None:
    plan = plan_delivery(_members(8), SIZES, egress_rate=10 * MB)
    assert len(plan.groups) == 1
    group = plan.groups[0]
    assert set(group.members) == {f"m{i}" for i in range(8)} and set(group.blocks) == set(BASE)
    assert all(plan.unicast[f"m{i}"] == (f"lora{i}",) for i in range(8))
    assert plan.egress_bytes == plan.ideal_bytes == 90 * MB + 8 * MB // 10
    assert plan.unicast_only_bytes == 8 * (90 * MB + MB // 10)
    assert plan.mean_completion_s < plan.to_json()["unicast_only"]["mean_completion_s"] / 4
    assert plan.left_out == ()


def test_a_block_wanted_by_one_member_only_is_never_multicast() -> None:
    plan = plan_delivery(
        [MemberDemand("a", ("base0", "lora0")), MemberDemand("b", ("lora1",))], SIZES, egress_rate=10 * MB
    )
    assert plan.groups == ()
    assert plan.unicast == {"a": ("base0", "lora0"), "b": ("lora1",)}
    assert plan.egress_bytes == plan.unicast_only_bytes


def test_a_slow_device_is_left_out_when_it_would_hold_everyone_back() -> None:
    plan = plan_delivery(_members(8, {3: 0.5 * MB}), SIZES, egress_rate=10 * MB)
    assert plan.left_out == ("m3",)
    assert "m3" not in plan.groups[0].members and plan.groups[0].rate == 10 * MB
    assert set(plan.unicast["m3"]) == {*BASE, "lora3"}
    # Waiting for it would have made every member as slow as it is.
    assert plan.mean_completion_s < 90 * MB / (0.5 * MB) / 2


def test_a_device_only_a_little_slower_stays_in_the_group() -> None:
    plan = plan_delivery(_members(8, {3: 9 * MB}), SIZES, egress_rate=10 * MB)
    assert plan.left_out == () and len(plan.groups) == 1
    assert plan.groups[0].rate == 9 * MB


def test_slow_devices_get_a_group_of_their_own() -> None:
    rates = {i: 0.5 * MB for i in range(4)}
    plan = plan_delivery(_members(12, rates), SIZES, egress_rate=10 * MB)
    assert sorted(g.rate for g in plan.groups) == [0.5 * MB, 10 * MB]
    slow = next(g for g in plan.groups if g.rate < MB)
    assert set(slow.members) == {"m0", "m1", "m2", "m3"}


def test_many_distinct_rates_use_the_greedy_search() -> None:
    members = _members(30, {i: (i + 1) * 0.4 * MB for i in range(30)})
    plan = plan_delivery(members, SIZES, egress_rate=10 * MB)
    assert len({m.rate for m in members}) > EXACT_MAX_CLASSES and plan.method == "greedy"
    assert plan.mean_completion_s <= plan.to_json()["unicast_only"]["mean_completion_s"]
    covered = {m for g in plan.groups for m in g.members} | set(plan.left_out)
    assert covered == {m.member for m in members}


def test_the_multicast_rate_caps_a_group() -> None:
    plan = plan_delivery(_members(2), SIZES, egress_rate=10 * MB, multicast_rate=2 * MB)
    assert plan.groups[0].rate == 2 * MB
    assert plan.completion_s["m0"] >= 90 * MB / (2 * MB)


@pytest.mark.parametrize(
    ("demands", "message"),
    [
        ([MemberDemand("a", ("nope",))], "no known size"),
        ([MemberDemand("a", ("base0",)), MemberDemand("a", ("base1",))], "unique"),
        ([MemberDemand("a", ("base0",), rate=0)], "positive"),
    ],
)
def test_bad_demands_are_refused(demands: list[MemberDemand], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        plan_delivery(demands, SIZES, egress_rate=MB)
