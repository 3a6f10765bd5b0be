from __future__ import annotations

import random
from collections import Counter

import pytest

import router.dataplane.policy as policy_module
from router.dataplane.policy import (
    Arm,
    RouteContext,
    WeightedPolicy,
    anchor,
    build_layout,
    unit_hash,
)


def arms(*weights: float) -> tuple[Arm, ...]:
    return tuple(Arm(f"v{i + 1}", w, baseline=i == 0) for i, w in enumerate(weights))


def test_unit_hash_is_stable_and_uniform() -> None:
    assert unit_hash("alice", "exp") == unit_hash("alice", "exp")
    assert unit_hash("alice", "exp") != unit_hash("alice", "other")
    values = [unit_hash(f"user-{i}") for i in range(20_000)]
    assert min(values) >= 0 and max(values) < 1
    assert abs(sum(values) / len(values) - 0.5) < 0.01


@pytest.mark.parametrize("weights", [(90, 10), (80, 10, 10), (50, 30, 20), (0, 100), (100, 0)])
def test_random_split_matches_weights(weights: tuple[float, ...]) -> None:
    policy = WeightedPolicy(salt="e", rng=random.Random(1))
    n = 40_000
    counts = Counter(policy.choose(RouteContext(), arms(*weights)).version for _ in range(n))
    for i, w in enumerate(weights):
        assert abs(counts[f"v{i + 1}"] / n * 100 - w) < 1.0


@pytest.mark.parametrize("weights", [(90, 10), (80, 10, 10), (50, 30, 20)])
def test_sticky_split_matches_weights(weights: tuple[float, ...]) -> None:
    policy = WeightedPolicy(salt="e")
    n = 40_000
    counts = Counter(
        policy.choose(RouteContext(user_key=f"u{i}"), arms(*weights)).version for i in range(n)
    )
    for i, w in enumerate(weights):
        assert abs(counts[f"v{i + 1}"] / n * 100 - w) < 1.0


def test_sticky_same_key_same_arm_across_policy_instances() -> None:
    a, b = WeightedPolicy(salt="e", rng=random.Random(1)), WeightedPolicy(salt="e")
    for i in range(500):
        ctx = RouteContext(user_key=f"user-{i}")
        assert a.choose(ctx, arms(70, 30)).version == b.choose(ctx, arms(70, 30)).version


def test_monotone_ramp_single_canary() -> None:
    """Raising the canary only moves users into it; its users stay."""
    policy = WeightedPolicy(salt="ramp")
    users = [f"u{i}" for i in range(5_000)]
    before: dict[str, str] = {}
    for w in (0, 1, 5, 10, 25, 50, 75, 100):
        now = {u: policy.choose(RouteContext(user_key=u), arms(100 - w, w)).version for u in users}
        for u, version in before.items():
            if version == "v2":
                assert now[u] == "v2", f"user {u} left the canary when it rose to {w}%"
        before = now
    assert set(before.values()) == {"v2"}


def test_monotone_ramp_leaves_other_candidates_alone() -> None:
    policy = WeightedPolicy(salt="ramp")
    users = [f"u{i}" for i in range(5_000)]

    def assign(w2: float, w3: float) -> dict[str, str]:
        a = arms(100 - w2 - w3, w2, w3)
        return {u: policy.choose(RouteContext(user_key=u), a).version for u in users}

    before = assign(5, 10)
    after = assign(30, 10)  # v2 rises, v1 gives way, v3 unchanged
    for u in users:
        if before[u] == "v3":
            assert after[u] == "v3"
        if before[u] == "v2":
            assert after[u] == "v2"
        if after[u] != before[u]:
            assert (before[u], after[u]) == ("v1", "v2")


@pytest.mark.parametrize("weights", [(10, 60, 30), (0, 50, 50), (0, 10, 90), (34, 33, 33)])
def test_layout_splits_exactly_whatever_the_weights(weights: tuple[float, ...]) -> None:
    layout = build_layout(arms(*weights), "e")
    shares = layout.shares()
    for i, w in enumerate(weights):
        assert shares.get(f"v{i + 1}", 0.0) == pytest.approx(w / 100, abs=1e-12)
    bounds = [p for s, e, _ in layout.intervals for p in (s, e)]
    assert bounds == sorted(bounds) and all(0 <= p <= 1 for p in bounds)  # disjoint, in [0, 1]


def test_a_candidate_starts_at_its_own_anchor_unless_an_earlier_one_holds_it() -> None:
    layout = build_layout(arms(80, 10, 10), "exp")
    assert layout.clean
    for version in ("v2", "v3"):
        (start, end) = [(s, e) for s, e, a in layout.intervals if a.version == version][0]
        assert start == anchor(version, "exp") and end - start == pytest.approx(0.1)
    # v2 (listed first) at 50 % runs past 1 and over v3's anchor: v3 skips to v2's end.
    crowded = build_layout(arms(40, 50, 10), "exp")
    assert crowded.displaced == ("v3",)
    assert crowded.lookup(anchor("v3", "exp")).version == "v2"


def test_layout_needs_one_baseline() -> None:
    with pytest.raises(ValueError):
        build_layout((Arm("a", 50), Arm("b", 50)))


class _TopDigest:
    def __init__(self, *_: object, **__: object) -> None: ...

    def digest(self) -> bytes:
        return b"\xff" * 8


def test_unit_hash_stays_below_one_at_the_top_of_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    # int / 2**64 rounds each of the top 2**10 hash values to exactly 1.0.
    monkeypatch.setattr(policy_module.hashlib, "blake2b", _TopDigest)
    u = unit_hash("anyone", "exp")
    assert u < 1.0 and u == 1.0 - 2.0**-53
    # Such a user is a candidate's at 100 %, never the baseline's at 0 %.
    only = (Arm("v1", 0, baseline=True), Arm("v2", 100))
    assert WeightedPolicy(salt="exp").choose(RouteContext(user_key="anyone"), only).version == "v2"
