"""Rollout: canary decisions become experiment operations, windows come from snapshots."""

from __future__ import annotations

import pytest

from router.controlplane.canary import CanaryPlan, CanaryStatus, GateConfig
from router.controlplane.operations import Promote, Rollback, SetWeights
from router.controlplane.rollout import Rollout, weights_for
from router.dataplane.measures import ArmMetrics


def grow(m: ArmMetrics, n: int, fallbacks: int = 0) -> ArmMetrics:
    out = ArmMetrics().merge(m)
    for i in range(n):
        out.record(5.0, fallback=i < fallbacks)
    return out


PLAN = CanaryPlan("v2", "v1", steps=(20, 50, 100), interval_s=1, min_requests=50,
                  gates=GateConfig(failures_to_rollback=2))


def test_weights_for_keeps_other_candidates() -> None:
    assert weights_for({"v1": 80, "v2": 10, "v3": 10}, "v1", "v2", 50) == {"v2": 50, "v1": 40}
    with pytest.raises(ValueError, match="does not fit"):
        weights_for({"v1": 10, "v2": 0, "v3": 90}, "v1", "v2", 20)


def test_healthy_candidate_advances_then_promotes() -> None:
    r = Rollout.create(PLAN)
    op = r.start({"v1": 100, "v2": 0}, now=0.0)
    assert op == SetWeights({"v2": 20, "v1": 80})
    merged = {"v1": ArmMetrics(), "v2": ArmMetrics()}
    ops = []
    t = 0.0
    for _ in range(3):
        r.tick(merged, {}, t)  # opens the window's snapshot
        merged = {"v1": grow(merged["v1"], 100), "v2": grow(merged["v2"], 100)}
        t += 2
        decision, op = r.tick(merged, {"v1": 80, "v2": 20}, t)
        ops.append(op)
    assert [type(o) for o in ops if o] == [SetWeights, SetWeights, Promote]
    assert ops[-1] == Promote("v2") and ops[0] == SetWeights({"v2": 50, "v1": 50})
    assert r.state.status is CanaryStatus.PROMOTED


def test_failing_candidate_rolls_back_after_n_windows() -> None:
    r = Rollout.create(PLAN)
    r.start({"v1": 100, "v2": 0}, now=0.0)
    merged = {"v1": ArmMetrics(), "v2": ArmMetrics()}
    t, last = 0.0, None
    for _ in range(2):
        r.tick(merged, {}, t)
        merged = {"v1": grow(merged["v1"], 100), "v2": grow(merged["v2"], 100, fallbacks=20)}
        t += 2
        _, last = r.tick(merged, {"v1": 80, "v2": 20}, t)
    assert last == Rollback("v2")
    assert r.state.status is CanaryStatus.ROLLED_BACK


def test_round_trip_restarts_the_window() -> None:
    r = Rollout.create(PLAN)
    r.start({"v1": 100, "v2": 0}, now=0.0)
    again = Rollout.from_dict(r.to_dict())
    assert again.state == r.state and again.plan == r.plan and again.base == {}
