"""Replacement policies: one contract suite for every policy, then policy-specific behaviour."""

import hashlib
import json
import random
from collections.abc import Callable

import pytest

from cachenet.errors import BadInput, CapacityExceeded
from placement.replacement import (
    POLICIES,
    BundlePolicy,
    LFUPolicy,
    LRUPolicy,
    ReplacementPolicy,
    SharingLFUPolicy,
    SharingLRUPolicy,
    make_policy,
    serve_request,
)

MB = 1_000_000
PolicyFactory = Callable[[int], ReplacementPolicy]


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bid(label: int | str) -> str:
    """A 32-hex block id derived from a small label."""
    return hashlib.blake2b(str(label).encode(), digest_size=16).hexdigest()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=sorted(POLICIES))
def make(request: pytest.FixtureRequest, clock: ManualClock) -> PolicyFactory:
    name: str = request.param

    def factory(capacity_bytes: int) -> ReplacementPolicy:
        return make_policy(name, capacity_bytes=capacity_bytes, clock=clock)

    return factory


# Contract suite: every policy.


def test_insert_tracks_membership_and_bytes(make: PolicyFactory) -> None:
    policy = make(100)
    policy.insert(bid(1), 30, models=["a"])
    policy.insert(bid(2), 20)
    assert bid(1) in policy and bid(2) in policy and bid(3) not in policy
    assert len(policy) == 2
    assert policy.used_bytes == 50
    assert policy.capacity_bytes == 100
    assert policy.models_of(bid(1)) == {"a"}
    assert policy.victims(50) == []


def test_insert_beyond_capacity_raises(make: PolicyFactory) -> None:
    policy = make(100)
    policy.insert(bid(1), 80)
    with pytest.raises(CapacityExceeded):
        policy.insert(bid(2), 30)
    assert bid(2) not in policy and policy.used_bytes == 80


def test_reinsert_same_block_counts_as_use_and_bad_size_is_rejected(make: PolicyFactory) -> None:
    policy = make(100)
    policy.insert(bid(1), 10)
    policy.insert(bid(1), 10, models=["m"])
    assert policy.used_bytes == 10 and policy.models_of(bid(1)) == {"m"}
    with pytest.raises(BadInput):
        policy.insert(bid(1), 11)
    with pytest.raises(BadInput):
        policy.insert(bid(2), -1)


def test_admit_rejects_blocks_larger_than_capacity(make: PolicyFactory) -> None:
    policy = make(100)
    assert policy.admit(bid(1), 100)
    assert not policy.admit(bid(1), 101)


def test_hit_protects_a_block(make: PolicyFactory, clock: ManualClock) -> None:
    policy = make(30)
    for n in (1, 2, 3):
        policy.insert(bid(n), 10)
        clock.advance(1)
    policy.touch(bid(1), model="m")
    policy.touch(bid(1))
    assert policy.victims(10) == [bid(2)]
    assert policy.victims(20) == [bid(2), bid(3)]
    assert policy.models_of(bid(1)) == {"m"}


def test_eviction_order_without_hits_is_insertion_order(make: PolicyFactory, clock: ManualClock) -> None:
    policy = make(40)
    for n in range(4):
        policy.insert(bid(n), 10)
        clock.advance(1)
    assert policy.victims(40) == [bid(0), bid(1), bid(2), bid(3)]


def test_victims_does_not_remove_but_evict_does(make: PolicyFactory) -> None:
    policy = make(20)
    policy.insert(bid(1), 10)
    policy.insert(bid(2), 10)
    assert policy.victims(5) == [bid(1)]
    assert bid(1) in policy and policy.used_bytes == 20
    assert policy.evict(5) == [bid(1)]
    assert bid(1) not in policy and policy.used_bytes == 10


def test_victims_free_enough_bytes_and_no_more_victims_than_needed(make: PolicyFactory) -> None:
    policy = make(100)
    sizes = {bid(n): size for n, size in enumerate((10, 50, 30))}
    for block_id, size in sizes.items():
        policy.insert(block_id, size)
    chosen = policy.victims(35)
    freed = sum(sizes[b] for b in chosen)
    assert policy.used_bytes - freed + 35 <= 100
    assert policy.used_bytes - (freed - sizes[chosen[-1]]) + 35 > 100


def test_byte_capacity_is_never_exceeded(make: PolicyFactory, clock: ManualClock) -> None:
    rng = random.Random(7)
    sizes = {bid(n): rng.randint(1, 40) for n in range(60)}
    policy = make(150)
    for step in range(2000):
        model = f"m{rng.randint(0, 9)}"
        blocks = dict(rng.sample(sorted(sizes.items()), rng.randint(1, 4)))
        info = serve_request(policy, model, blocks)
        assert info.hits + info.misses == len(blocks)
        assert policy.used_bytes <= policy.capacity_bytes
        if step % 97 == 0:
            tracked = [b for b in sizes if b in policy]
            assert policy.used_bytes == sum(sizes[b] for b in tracked)
            assert len(policy) == len(tracked)
        clock.advance(0.5)


def test_pinned_blocks_are_never_victims(make: PolicyFactory) -> None:
    policy = make(30)
    for n in (1, 2, 3):
        policy.insert(bid(n), 10)
    policy.pin([bid(1), bid(9)])
    assert policy.pinned == {bid(1), bid(9)}
    assert policy.victims(10) == [bid(2)]
    assert policy.victims(20) == [bid(2), bid(3)]
    with pytest.raises(CapacityExceeded):
        policy.victims(21)
    policy.unpin([bid(1)])
    assert policy.victims(30) == [bid(1), bid(2), bid(3)]


def test_need_larger_than_capacity_or_negative_is_refused(make: PolicyFactory) -> None:
    policy = make(30)
    with pytest.raises(CapacityExceeded):
        policy.victims(31)
    with pytest.raises(BadInput):
        policy.victims(-1)


def test_remove_and_touch_of_absent_block_are_noops(make: PolicyFactory) -> None:
    policy = make(30)
    policy.remove(bid(1))
    policy.touch(bid(1), model="m")
    policy.set_models(bid(1), ["m"])
    assert len(policy) == 0 and policy.used_bytes == 0
    assert policy.models_of(bid(1)) == frozenset()


def test_clear_forgets_everything(make: PolicyFactory) -> None:
    policy = make(30)
    policy.insert(bid(1), 10, models=["m"])
    policy.record_request("m")
    policy.pin([bid(1)])
    policy.clear()
    assert len(policy) == 0 and policy.used_bytes == 0 and policy.pinned == frozenset()
    policy.insert(bid(2), 30)
    assert policy.victims(30) == [bid(2)]


def test_state_round_trip_keeps_blocks_pins_and_order(make: PolicyFactory, clock: ManualClock) -> None:
    policy = make(100)
    for n in range(6):
        policy.insert(bid(n), 10 + n, models=[f"m{n % 2}", "base"])
        clock.advance(1)
    for n in (4, 1, 4, 0, 5):
        policy.touch(bid(n))
        clock.advance(1)
    policy.record_request("m1", weight=3)
    policy.pin([bid(2)])
    state = json.loads(json.dumps(policy.to_state()))
    restored = type(policy).from_state(state, capacity_bytes=100, clock=clock)
    assert type(restored) is type(policy)
    assert restored.used_bytes == policy.used_bytes and len(restored) == len(policy)
    assert restored.pinned == policy.pinned
    assert restored.models_of(bid(3)) == policy.models_of(bid(3))
    assert restored.victims(100 - 12) == policy.victims(100 - 12)


def test_state_for_another_policy_is_bad_input(make: PolicyFactory, clock: ManualClock) -> None:
    policy = make(10)
    state = policy.to_state()
    other = next(cls for cls in POLICIES.values() if not isinstance(policy, cls))
    with pytest.raises(BadInput):
        other.from_state(state, capacity_bytes=10, clock=clock)
    with pytest.raises(BadInput):
        type(policy).from_state({"policy": state["policy"]}, capacity_bytes=10, clock=clock)


# Registry.


def test_registry_names_and_classes() -> None:
    assert POLICIES == {
        "lru": LRUPolicy,
        "lfu": LFUPolicy,
        "sharing-lru": SharingLRUPolicy,
        "sharing-lfu": SharingLFUPolicy,
        "bundle": BundlePolicy,
    }
    assert isinstance(make_policy("sharing-lfu", capacity_bytes=1, half_life_s=5.0), SharingLFUPolicy)


def test_make_policy_rejects_unknown_name_and_bad_options() -> None:
    with pytest.raises(BadInput):
        make_policy("fifo", capacity_bytes=10)
    with pytest.raises(BadInput):
        make_policy("lru", capacity_bytes=10, half_life_s=5.0)
    with pytest.raises(BadInput):
        make_policy("lru", capacity_bytes=-1)
    with pytest.raises(BadInput):
        SharingLFUPolicy(10, half_life_s=0.0)


# Policy-specific behaviour.


def test_lru_evicts_least_recently_used() -> None:
    policy = LRUPolicy(30)
    for n in (1, 2, 3):
        policy.insert(bid(n), 10)
    policy.touch(bid(1))
    policy.touch(bid(2))
    assert policy.evict(10) == [bid(3)]
    policy.insert(bid(4), 10)
    assert policy.victims(30) == [bid(1), bid(2), bid(4)]


def test_lru_ignores_model_demand_but_sharing_lru_uses_it() -> None:
    plain, sharing = LRUPolicy(30), SharingLRUPolicy(30)
    for policy in (plain, sharing):
        policy.insert(bid("backbone"), 10, models=["v1", "v2"])
        policy.insert(bid("a1"), 10, models=["v1"])
        policy.insert(bid("a2"), 10, models=["v2"])
        policy.record_request("v2")
    assert plain.victims(10) == [bid("backbone")]
    assert sharing.victims(10) == [bid("a1")]


def test_lfu_evicts_least_frequent_and_breaks_ties_by_recency() -> None:
    policy = LFUPolicy(50)
    for n in range(5):
        policy.insert(bid(n), 10)
    policy.touch(bid(0))
    policy.touch(bid(0))  # freq 3
    policy.touch(bid(3))  # freq 2, touched before 1
    policy.touch(bid(1))  # freq 2
    # freq 1: 2 and 4, inserted in that order; freq 2: 3 then 1 by last use
    assert policy.victims(50) == [bid(2), bid(4), bid(3), bid(1), bid(0)]


def test_lfu_forgets_frequency_on_eviction() -> None:
    policy = LFUPolicy(20)
    policy.insert(bid(1), 10)
    for _ in range(5):
        policy.touch(bid(1))
    policy.remove(bid(1))
    policy.insert(bid(2), 10)
    policy.touch(bid(2))
    policy.insert(bid(1), 10)
    assert policy.victims(10) == [bid(1)]


def test_sharing_lfu_value_function_is_decayed_own_use_plus_model_demand(
    clock: ManualClock,
) -> None:
    policy = SharingLFUPolicy(100, clock=clock, half_life_s=10.0)
    policy.insert(bid(1), 10, models=["m1", "m2"])  # own use 1
    policy.record_request("m1")  # D(m1) = 1
    assert policy.value(bid(1)) == pytest.approx(2.0)
    clock.advance(10.0)
    assert policy.value(bid(1)) == pytest.approx(1.0)
    policy.record_request("m2", weight=2.0)
    policy.touch(bid(1))
    assert policy.value(bid(1)) == pytest.approx(4.0)
    assert policy.demand("m1") == pytest.approx(0.5)
    policy.set_models(bid(1), ["m2"])
    assert policy.value(bid(1)) == pytest.approx(3.5)


def test_sharing_lfu_adapts_when_popularity_drifts(clock: ManualClock) -> None:
    policy = SharingLFUPolicy(20, clock=clock, half_life_s=10.0)
    policy.insert(bid("old"), 10, models=["old"])
    for _ in range(50):
        policy.record_request("old")
    clock.advance(200.0)  # 20 half-lives: 50 requests decay to ~5e-5
    policy.insert(bid("new"), 10, models=["new"])
    policy.record_request("new")
    assert policy.victims(10) == [bid("old")]


def test_sharing_lfu_rebases_scores_without_overflow(clock: ManualClock) -> None:
    policy = SharingLFUPolicy(20, clock=clock, half_life_s=1.0)
    policy.insert(bid(1), 10, models=["a"])
    policy.insert(bid(2), 10, models=["b"])
    for _ in range(5):
        clock.advance(300.0)  # beyond the rebase threshold each time
        policy.record_request("a")
        policy.record_request("b")
        policy.record_request("b")
    assert policy.victims(10) == [bid(1)]
    assert 0.0 < policy.value(bid(2)) < 10.0


# The key test: a shared backbone under many LoRA variants.

BACKBONE = [bid(f"backbone-{n}") for n in range(10)]
ADAPTERS = [bid(f"adapter-{n}") for n in range(20)]
VARIANTS = [f"org/base-lora-{n}" for n in range(20)]
CAPACITY = 10 * 10 * MB + 3 * 2 * MB


def variant_blocks(n: int, *, with_backbone: bool = True) -> dict[str, int]:
    """Blocks of variant n in reading order: the backbone, then its adapter."""
    blocks = {b: 10 * MB for b in BACKBONE} if with_backbone else {}
    blocks[ADAPTERS[n]] = 2 * MB
    return blocks


@pytest.mark.parametrize("name", ["sharing-lru", "sharing-lfu"])
def test_sharing_policies_keep_a_shared_backbone_resident(name: str, clock: ManualClock) -> None:
    policy = make_policy(name, capacity_bytes=CAPACITY, clock=clock)
    whole = LRUPolicy(CAPACITY, clock=clock)
    backbone_evictions = whole_backbone_evictions = 0
    miss_bytes = whole_miss_bytes = 0
    for step in range(200):
        n = step % len(VARIANTS)
        info = serve_request(policy, VARIANTS[n], variant_blocks(n))
        backbone_evictions += sum(b in BACKBONE for b in info.evicted)
        miss_bytes += info.miss_bytes
        whole_info = serve_request(whole, VARIANTS[n], variant_blocks(n), granularity="model")
        whole_backbone_evictions += len(BACKBONE) * len(whole_info.evicted)
        whole_miss_bytes += whole_info.miss_bytes
        clock.advance(1.0)
    assert backbone_evictions == 0
    assert all(b in policy for b in BACKBONE)
    assert miss_bytes == 100 * MB + 200 * 2 * MB  # backbone once, every adapter each time
    # whole-model granularity fits one model (102 MB) and reloads the backbone every time
    assert whole_backbone_evictions == 199 * len(BACKBONE)
    assert whole_miss_bytes == 200 * 102 * MB
    assert whole_miss_bytes > 40 * miss_bytes


@pytest.mark.parametrize(
    ("name", "keeps_backbone"),
    [("lru", False), ("lfu", False), ("sharing-lru", True), ("sharing-lfu", True)],
)
def test_backbone_survives_adapter_only_fetches_only_when_sharing_aware(
    name: str, keeps_backbone: bool, clock: ManualClock
) -> None:
    # Devices that already hold the backbone fetch only their adapter; the node still counts
    # the model request, which is what a sharing-aware policy credits to the backbone.
    policy = make_policy(name, capacity_bytes=CAPACITY, clock=clock)
    serve_request(policy, VARIANTS[0], variant_blocks(0))
    for b in BACKBONE:
        policy.set_models(b, VARIANTS)
    backbone_evictions = 0
    for step in range(1, 200):
        n = step % len(VARIANTS)
        info = serve_request(policy, VARIANTS[n], variant_blocks(n, with_backbone=False))
        backbone_evictions += sum(b in BACKBONE for b in info.evicted)
        clock.advance(1.0)
    assert (backbone_evictions == 0) is keeps_backbone
    assert all(b in policy for b in BACKBONE) is keeps_backbone


def test_serve_request_bypasses_what_cannot_be_stored() -> None:
    policy = LRUPolicy(10)
    policy.insert(bid(1), 10)
    policy.pin([bid(1)])
    info = serve_request(policy, "m", {bid(2): 5, bid(3): 50})
    assert info.bypassed == (bid(2), bid(3))
    assert (info.misses, info.miss_bytes, info.model_hit) == (2, 55, False)
    assert serve_request(policy, "m", {bid(1): 10}).model_hit
