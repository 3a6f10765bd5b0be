from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from router.controlplane.experiment import ExperimentState
from router.controlplane.operations import AddCandidate, SetWeights, apply_operation
from router.dataplane.bandit import ThompsonPolicy
from router.dataplane.policy import Arm, RouteContext
from serve.config import ExperimentConfig
from serve.errors import InvalidInput

ARMS = (Arm("A", 50, baseline=True), Arm("B", 50))


def simulate(
    policy: ThompsonPolicy, arms: tuple[Arm, ...], p: dict[str, float], rounds: int, seed: int = 0
) -> list[str]:
    world = random.Random(seed)  # rewards come from a separate stream
    chosen = []
    for i in range(rounds):
        arm = policy.choose(RouteContext(user_key=f"u{i}"), arms)
        policy.update(arm.version, world.random() < p[arm.version])
        chosen.append(arm.version)
    return chosen


def test_moves_most_traffic_to_the_better_arm() -> None:
    policy = ThompsonPolicy(floor=0.05, rng=random.Random(42))
    chosen = simulate(policy, ARMS, {"A": 0.7, "B": 0.9}, 5000)
    last = Counter(chosen[-1000:])
    assert last["B"] / 1000 > 0.70
    assert last["A"] / 1000 >= 0.05 - 0.02  # the floor, within sampling noise
    assert policy.posterior_mean("B") > policy.posterior_mean("A")
    shares = policy.traffic_shares(5000)
    assert shares["B"] > 0.8 and shares["A"] >= 0.05 - 0.015
    assert sum(shares.values()) == pytest.approx(1.0)


def test_every_arm_keeps_the_floor_share() -> None:
    arms = (Arm("A", 40, baseline=True), Arm("B", 30), Arm("C", 30))
    policy = ThompsonPolicy(floor=0.05, rng=random.Random(1))
    chosen = simulate(policy, arms, {"A": 0.1, "B": 0.95, "C": 0.2}, 6000)
    tail = Counter(chosen[-3000:])
    for v in ("A", "C"):  # clearly worse: they live on the floor alone
        share = tail[v] / 3000
        assert 0.05 - 0.015 <= share <= 0.10, (v, share)  # ~4 sigma of 3000 draws
    exact = policy.traffic_shares(20_000)
    assert min(exact.values()) >= 0.05 - 0.005


def test_floor_is_uniform_when_it_covers_everything() -> None:
    policy = ThompsonPolicy(floor=0.5, rng=random.Random(3))
    policy.update("B", True, n=1000)
    policy.update("A", False, n=1000)
    shares = policy.traffic_shares(20_000, arms=ARMS)
    assert shares["A"] == pytest.approx(0.5, abs=0.02)


def test_deterministic_with_a_seeded_rng_and_ignores_user_keys() -> None:
    a = simulate(ThompsonPolicy(rng=random.Random(9)), ARMS, {"A": 0.6, "B": 0.8}, 500)
    b = simulate(ThompsonPolicy(rng=random.Random(9)), ARMS, {"A": 0.6, "B": 0.8}, 500)
    assert a == b
    p1, p2 = ThompsonPolicy(rng=random.Random(4)), ThompsonPolicy(rng=random.Random(4))
    ctx_a, ctx_b = RouteContext(user_key="alice"), RouteContext(user_key="bob")
    assert [p1.choose(ctx_a, ARMS) for _ in range(50)] == [
        p2.choose(ctx_b, ARMS) for _ in range(50)
    ]


def test_zero_weight_arms_are_off() -> None:
    policy = ThompsonPolicy(rng=random.Random(0))
    arms = (Arm("A", 100, baseline=True), Arm("B", 0))
    assert {policy.choose(RouteContext(), arms).version for _ in range(200)} == {"A"}
    with pytest.raises(ValueError):
        policy.choose(RouteContext(), (Arm("A", 0, baseline=True),))
    with pytest.raises(ValueError):
        ThompsonPolicy(floor=1.5)


def test_round_trip() -> None:
    policy = ThompsonPolicy(floor=0.1, rng=random.Random(5))
    simulate(policy, ARMS, {"A": 0.5, "B": 0.7}, 300)
    data = json.loads(json.dumps(policy.to_dict()))
    back = ThompsonPolicy.from_dict(data, rng=random.Random(5))
    assert back.to_dict() == policy.to_dict()
    assert back.floor == 0.1 and sum(back.successes.values()) + sum(back.failures.values()) == 300
    assert back.traffic_shares(2000) == policy.traffic_shares(2000)


# ---------------------------------------------------------------- the floor against the arms


def bandit_experiment(floor: float, *weights: float) -> dict[str, object]:
    return {
        "baseline": "v1", "policy": "bandit", "bandit_floor_percent": floor * 100,
        "arms": [{"version": f"v{i + 1}", "weight": w} for i, w in enumerate(weights)],
    }


def test_a_floor_the_arms_cannot_all_get_is_refused_with_what_to_do() -> None:
    # 40 % x 3 arms is 120 % of the traffic: each arm would get 1/3, below the promised 40 %.
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(bandit_experiment(0.4, 40, 30, 30))
    message = str(info.value)
    assert "bandit_floor_percent: 40 for each of 3 eligible arms" in message
    assert "is 120 % of the traffic" in message
    assert "lower bandit_floor_percent to at most 33.33" in message and "weight 0" in message


@pytest.mark.parametrize("floor, weights", [
    (0.4, (60, 40, 0)),  # two eligible arms: 0.8
    (0.3333, (40, 30, 30)),
    (0.5, (50, 50)),  # exactly 1: uniform
    (0.25, (25, 25, 25, 25)),
])
def test_a_floor_that_fits_the_eligible_arms_is_accepted(
    floor: float, weights: tuple[float, ...]
) -> None:
    exp = ExperimentConfig.model_validate(bandit_experiment(floor, *weights))
    arms = tuple(Arm(a.version, a.weight, baseline=a.version == "v1") for a in exp.arms)
    policy = ThompsonPolicy(floor=floor, rng=random.Random(0))
    assert policy.floor_holds(arms)
    policy.update("v1", True, n=5000)  # v1 is clearly best; the others live on the floor
    shares = policy.traffic_shares(20_000, arms=arms)
    assert min(shares.values()) >= floor - 0.015


def test_the_weighted_policy_does_not_check_the_floor() -> None:
    data = {**bandit_experiment(0.4, 40, 30, 30), "policy": "weighted"}
    assert ExperimentConfig.model_validate(data).bandit_floor == 0.4


def test_an_admin_change_that_breaks_the_floor_is_refused() -> None:
    """Switching a third arm on under a 0.4 floor: 422 with the same message, nothing changes."""
    state = ExperimentState(ExperimentConfig.model_validate(bandit_experiment(0.4, 60, 40, 0)))
    deployed = ("v1", "v2", "v3", "v4")
    for op in (SetWeights({"v3": 10, "v1": 50}), AddCandidate("v4", 10)):
        with pytest.raises(InvalidInput, match=r"3 eligible arms.*at most 33\.33"):
            apply_operation(state, op, deployed=deployed, who="test")
    new, _ = apply_operation(state, AddCandidate("v4"), deployed=deployed, who="test")
    assert new.weights()["v4"] == 0  # at 0 % it is not eligible


def test_a_policy_built_by_hand_with_too_high_a_floor_says_so() -> None:
    policy = ThompsonPolicy(floor=0.4, rng=random.Random(2))
    arms = (Arm("A", 40, baseline=True), Arm("B", 30), Arm("C", 30))
    assert not policy.floor_holds(arms)
    shares = policy.traffic_shares(20_000, arms=arms)
    assert max(shares.values()) == pytest.approx(1 / 3, abs=0.02)  # uniform, below 0.4
