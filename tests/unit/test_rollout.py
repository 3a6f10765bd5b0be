"""Rollout: canary decisions become experiment operations, windows come from snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from router.controlplane.canary import (
    Action,
    CanaryPlan,
    CanaryStatus,
    Decision,
    GateConfig,
    Verdict,
)
from router.controlplane.operations import Operation, Promote, Rollback, SetWeights
from router.controlplane.rollout import Rollout, does_not_fit, weights_for
from router.controlplane.service import ExperimentService
from router.controlplane.store import FileStore
from router.dataplane.measures import ArmMetrics
from serve.config import parse_config
from serve.errors import InvalidInput


def grow(m: ArmMetrics, n: int, fallbacks: int = 0) -> ArmMetrics:
    out = ArmMetrics().merge(m)
    for i in range(n):
        out.record(5.0, fallback=i < fallbacks)
    out.record_comparison(n - fallbacks, 0)  # the baseline agrees with every answer
    return out


PLAN = CanaryPlan("v2", "v1", steps=(20, 50, 100), interval_s=1, min_requests=50,
                  gates=GateConfig(failures_to_rollback=2))


def test_weights_for_keeps_other_candidates() -> None:
    assert weights_for({"v1": 80, "v2": 10, "v3": 10}, "v1", "v2", 50) == {"v2": 50, "v1": 40}
    with pytest.raises(ValueError, match=r"does not fit .* 90% \(v3 90%\): at most 10% is left"):
        weights_for({"v1": 10, "v2": 0, "v3": 90}, "v1", "v2", 20)


def test_the_last_step_takes_all_the_baselines_share() -> None:
    """100 % beside another candidate is everything it leaves; the promote follows."""
    assert weights_for({"v1": 60, "v2": 30, "v3": 10}, "v1", "v2", 100) == {"v2": 90, "v1": 0}
    assert does_not_fit({"v1": 0, "v2": 40, "v3": 60}, "v1", "v2", 100) is None


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
        _, step_op = r.tick(merged, {"v1": 80, "v2": 20}, t)
        ops.append(step_op)
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


# ---------------------------------------------------------------- steps that do not fit


def test_a_plan_whose_step_does_not_fit_is_refused_at_start() -> None:
    r = Rollout.create(PLAN)  # steps 20, 50, 100
    with pytest.raises(InvalidInput, match=r"step 50%: v2 at 50% does not fit beside the other "
                                           r"candidates' 60% \(v3 60%\): at most 40% is left"):
        r.start({"v1": 40, "v2": 0, "v3": 60}, now=0.0)
    assert r.state.status is CanaryStatus.PENDING and r.state.history == ()


def run_window(r: Rollout, merged: dict[str, ArmMetrics], weights: Mapping[str, float],
               t: float) -> tuple[dict[str, ArmMetrics], float, Decision, Operation | None]:
    """One healthy window: open it, serve 100 requests per arm, judge it."""
    r.tick(merged, weights, t)
    merged = {"v1": grow(merged["v1"], 100), "v2": grow(merged["v2"], 100)}
    t += 2
    decision, op = r.tick(merged, weights, t)
    return merged, t, decision, op


def test_a_step_without_room_pauses_the_canary_with_the_reason_then_resumes() -> None:
    """An operator raised v3 under the canary: no tick-failed loop, a paused canary that says
    why; once there is room, resume goes on with the next step."""
    r = Rollout.create(PLAN)
    assert r.start({"v1": 90, "v2": 0, "v3": 10}, now=0.0) == SetWeights({"v2": 20, "v1": 70})
    merged = {"v1": ArmMetrics(), "v2": ArmMetrics()}
    crowded = {"v1": 10, "v2": 20, "v3": 70}  # v3 raised to 70 % meanwhile
    merged, t, decision, op = run_window(r, merged, crowded, 0.0)
    assert op is None
    assert decision.action is Action.PAUSE and decision.verdict is Verdict.PASS
    assert decision.new_weight == 20
    reason = decision.reasons[-1]
    assert "paused at step 1/3 (20%): every gate passed" in reason
    assert "v2 at 50% does not fit beside the other candidates' 70% (v3 70%)" in reason
    assert "resume the canary, or abort it" in reason
    assert r.state.status is CanaryStatus.PAUSED and (r.state.step, r.state.weight) == (0, 20)
    assert r.state.history[-1] == decision
    # Paused: later ticks wait, change nothing and record nothing.
    again, op = r.tick(merged, crowded, t + 100)
    assert op is None and again.verdict is Verdict.WAIT and r.state.history[-1] == decision
    # The operator lowers v3 and resumes: the next window advances to 50 %.
    r.resume(t + 100)
    roomy = {"v1": 70, "v2": 20, "v3": 10}
    merged, t, decision, op = run_window(r, merged, roomy, t + 100)
    assert decision.action is Action.ADVANCE and op == SetWeights({"v2": 50, "v1": 40})
    # The 100 % step beside v3 takes all of the baseline's share, then promotes.
    merged, t, decision, op = run_window(r, merged, {"v1": 40, "v2": 50, "v3": 10}, t)
    assert op == SetWeights({"v2": 90, "v1": 0})
    merged, t, decision, op = run_window(r, merged, {"v1": 0, "v2": 90, "v3": 10}, t)
    assert op == Promote("v2") and r.state.status is CanaryStatus.PROMOTED


def test_the_service_refuses_a_misfit_plan_and_changes_nothing(tmp_path: Path) -> None:
    config = parse_config({
        "models": [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}],
        "experiment": {"name": "exp", "baseline": "v1",
                       "arms": [{"version": "v1", "weight": 40}, {"version": "v2", "weight": 60}]},
    })
    svc = ExperimentService(config, FileStore(tmp_path, "app"), clock=lambda: 0.0)
    plan = {"candidate": "v3", "steps": [25, 50, 100], "interval_s": 10, "min_requests": 20}
    with pytest.raises(InvalidInput, match=r"step 50%.*at most 40% is left"):
        asyncio.run(svc.start_canary(plan, "ops"))
    assert svc.rollout is None and svc.state.revision == 1  # v3 was not even added
    assert svc.state.weights() == {"v1": 40, "v2": 60}
    out = asyncio.run(svc.start_canary({**plan, "steps": [25, 40, 100]}, "ops"))
    assert out["state"]["status"] == "running"
    assert svc.state.weights() == {"v1": 15, "v2": 60, "v3": 25}
