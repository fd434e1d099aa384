"""The bundle-aware replacement policy: a model is a hit only when every block is held."""

import hashlib

from placement.replacement import BundlePolicy, LFUPolicy, LRUPolicy, ReplacementPolicy, serve_request


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bid(label: str) -> str:
    return hashlib.blake2b(label.encode(), digest_size=16).hexdigest()


def model(name: str, *sizes: int) -> dict[str, int]:
    return {bid(f"{name}/{k}"): s for k, s in enumerate(sizes)}


def test_strict_policy_never_admits_a_block_of_a_model_that_cannot_fit() -> None:
    clock = ManualClock()
    policy = BundlePolicy(100, clock=clock, byte_weight=None)
    big = model("big", 40, 40, 40)
    for _ in range(20):
        info = serve_request(policy, "big", big)
        assert info.hits == 0 and set(info.bypassed) == set(big)
        clock.now += 1
    assert policy.used_bytes == 0
    assert all(policy.value(b) == 0.0 for b in big)


def test_a_model_that_cannot_fit_never_displaces_one_that_can() -> None:
    clock = ManualClock()
    policy = BundlePolicy(100, clock=clock)  # default: byte hits may use the room left
    small, big = model("small", 30, 30), model("big", 40, 40, 40)
    serve_request(policy, "small", small)
    for step in range(200):
        clock.now += 1
        serve_request(policy, "big", big)
        if step % 10 == 0:
            clock.now += 1
            assert serve_request(policy, "small", small).model_hit
    assert all(b in policy for b in small)
    assert policy.used_bytes <= 100


def test_the_bundle_being_completed_is_not_its_own_victim_and_a_denser_one_wins() -> None:
    clock = ManualClock()
    policy = BundlePolicy(100, clock=clock)
    a, b = model("a", 30, 30, 30), model("b", 30, 30, 30)
    for _ in range(3):
        serve_request(policy, "a", a)
        clock.now += 1
    # one request for b does not break the complete, more demanded a
    assert not serve_request(policy, "b", b).model_hit
    clock.now += 1
    assert serve_request(policy, "a", a).model_hit
    # b becomes far more demanded: it is completed whole (a goes), no half of either is left
    for _ in range(12):
        clock.now += 1
        serve_request(policy, "b", b)
    assert all(x in policy for x in b)
    assert not any(x in policy for x in a)


def test_half_held_models_are_evicted_before_complete_ones_of_equal_demand() -> None:
    clock = ManualClock()
    policy = BundlePolicy(120, clock=clock, byte_weight=None)
    a, c = model("a", 30, 30), model("c", 30, 30)
    serve_request(policy, "a", a)
    serve_request(policy, "c", c)
    policy.remove(next(iter(c)))  # c is now half held (e.g. its other half was evicted)
    policy.record_request("zz", blocks=model("zz", 1))  # nothing of a or c is being served
    victims = policy.victims(120 - policy.used_bytes + 30)
    assert victims == [list(c)[1]]
    assert policy.value(list(c)[1]) < policy.value(list(a)[0])


def test_two_models_that_cannot_both_fit_do_not_evict_each_other_in_turn() -> None:
    """Alternating requests: LRU and LFU thrash (no model hit), the bundle policy keeps one."""

    def run(policy: ReplacementPolicy, clock: ManualClock) -> int:
        a, b = model("a", 20, 20, 20), model("b", 20, 20, 20)
        hits = 0
        for step in range(200):
            clock.now += 1
            name, blocks = ("a", a) if step % 2 else ("b", b)
            hits += serve_request(policy, name, blocks).model_hit
        return hits

    clock = ManualClock()
    assert run(BundlePolicy(100, clock=clock), clock) >= 90
    for plain in (LRUPolicy, LFUPolicy):
        clock = ManualClock()
        assert run(plain(100, clock=clock), clock) <= 10


def test_shared_backbone_is_kept_for_every_variant_that_needs_it() -> None:
    clock = ManualClock()
    policy = BundlePolicy(100, clock=clock)
    base = model("base", 25, 25)
    variants = {f"v{k}": {**base, **model(f"v{k}", 10)} for k in range(4)}
    for step in range(40):
        clock.now += 1
        name = f"v{step % 4}"
        serve_request(policy, name, variants[name])
    assert all(b in policy for b in base)
    assert sum(serve_request(policy, n, v).model_hit for n, v in variants.items()) >= 3


def test_state_round_trip_keeps_bundles_and_bundles_are_bounded() -> None:
    clock = ManualClock()
    policy = BundlePolicy(100, clock=clock, max_bundles=8)
    for k in range(50):
        clock.now += 1
        serve_request(policy, f"m{k}", model(f"m{k}", 5, 5))
    assert len(policy.to_state()["bundles"]) <= 8
    keep = model("keep", 10, 10)
    for _ in range(5):
        serve_request(policy, "keep", keep)
    state = policy.to_state()
    again = BundlePolicy.from_state(state, capacity_bytes=100, clock=clock)
    assert again.demand("keep") == policy.demand("keep") > 0
    assert [b for b in again.victims(100)] == [b for b in policy.victims(100)]
