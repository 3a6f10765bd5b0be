from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from router.controlplane.canary import (
    Action,
    CanaryPlan,
    CanaryState,
    CanaryStatus,
    GateConfig,
    Verdict,
    abort,
    check_gates,
    evaluate,
    new_state,
    pause,
    resume,
    start,
)
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats

T0 = 1_700_000_000.0
RPS_PER_INTERVAL = 20_000  # requests of all arms in one interval


def plan(**changes: object) -> CanaryPlan:
    p = CanaryPlan(
        "v2",
        "v1",
        steps=(5, 10, 25, 50, 100),
        interval_s=60,
        min_requests=200,
        gates=GateConfig(failures_to_rollback=3),
    )
    return replace(p, **changes)  # type: ignore[arg-type]


def window(
    rng: np.random.Generator,
    n: int,
    *,
    fail: float = 0.0,
    errors: float = 0.0,
    median_ms: float = 5.0,
) -> ArmMetrics:
    """``n`` requests: a share ``fail`` fell back to the baseline, ``errors`` reached the client."""
    m = ArmMetrics()
    if n == 0:
        return m
    outcome = rng.random(n)
    for u, ms in zip(outcome, rng.lognormal(np.log(median_ms), 0.3, n), strict=True):
        m.record(float(ms), fallback=u < fail, error=fail <= u < fail + errors)
    m.record_comparison(m.answered, 0)  # the baseline agrees: answer quality is not at issue
    return m


def run_windows(
    p: CanaryPlan, rng: np.random.Generator, max_evals: int, **candidate_kw: float
) -> tuple[CanaryState, list[Action]]:
    state = start(p, new_state(p), T0)
    now, actions = T0, []
    for _ in range(max_evals):
        if state.done:
            break
        now += p.interval_s
        n_cand = round(RPS_PER_INTERVAL * state.weight / 100)
        cand = window(rng, n_cand, **candidate_kw)
        base = window(rng, RPS_PER_INTERVAL - n_cand)
        state, decision = evaluate(p, state, cand, base, now)
        actions.append(decision.action)
    return state, actions


def test_healthy_candidate_reaches_100_and_promotes() -> None:
    p = plan()
    state, actions = run_windows(p, np.random.default_rng(1), max_evals=20, median_ms=5.2)
    assert actions == [Action.ADVANCE] * 4 + [Action.PROMOTE]  # len(steps) evaluations
    assert state.status is CanaryStatus.PROMOTED and state.weight == 100
    weights = [d.new_weight for d in state.history]
    assert weights == [5, 10, 25, 50, 100, 100]  # start, four advances, promote
    assert all(d.verdict is Verdict.PASS for d in state.history[1:])
    last = state.history[-1]
    assert any(r.startswith("p99_ratio: skip") for r in last.reasons)  # no baseline at 100 %
    assert any(r.startswith("error_rate: pass") for r in last.reasons)


@pytest.mark.parametrize("kind", ["fail", "errors"])
def test_candidate_failing_20_percent_rolls_back_within_its_gate_window(kind: str) -> None:
    p = plan()
    state, actions = run_windows(p, np.random.default_rng(2), max_evals=20, **{kind: 0.2})
    n = p.gates.failures_to_rollback
    assert actions == [Action.HOLD] * (n - 1) + [Action.ROLLBACK]
    assert state.status is CanaryStatus.ROLLED_BACK and state.weight == 0
    assert state.step == 0 and state.consecutive_failures == n
    verdicts = [d.verdict for d in state.history[1:]]
    assert verdicts == [Verdict.FAIL] * n
    gate = "fallback_rate" if kind == "fail" else "error_rate"
    rollback = state.history[-1]
    assert any(r.startswith(f"{gate}: fail") for r in rollback.reasons), rollback.reasons
    assert rollback.metrics[f"candidate_{gate}"] == pytest.approx(0.2, abs=0.05)


def test_hold_when_interval_not_elapsed_or_too_few_requests() -> None:
    p = plan()
    rng = np.random.default_rng(3)
    state = start(p, new_state(p), T0)
    good, base = window(rng, 500), window(rng, 9500)

    same, d = evaluate(p, state, good, base, T0 + 30)
    assert d.action is Action.HOLD and d.verdict is Verdict.WAIT and same == state
    assert d.reasons == ("interval: 30 s of 60 s elapsed",)
    assert not d.new_window

    same, d = evaluate(p, state, window(rng, 150), base, T0 + 90)
    assert d.action is Action.HOLD and d.verdict is Verdict.WAIT and same == state
    assert d.reasons == ("requests: 150 of 200 candidate requests",)

    moved, d = evaluate(p, state, good, base, T0 + 60)
    assert d.action is Action.ADVANCE and d.new_window and moved.window == state.window + 1
    assert moved.weight == 10 and moved.step_started_at == T0 + 60


def test_a_pass_resets_consecutive_failures() -> None:
    p = plan()
    rng = np.random.default_rng(4)
    state = start(p, new_state(p), T0)
    bad, good, base = window(rng, 1000, fail=0.2), window(rng, 1000), window(rng, 19_000)
    now = T0
    for cand, expect in [
        (bad, Action.HOLD),
        (bad, Action.HOLD),
        (good, Action.ADVANCE),
        (bad, Action.HOLD),
        (bad, Action.HOLD),
        (bad, Action.ROLLBACK),
    ]:
        now += 60
        state, d = evaluate(p, state, cand, base, now)
        assert d.action is expect
    assert state.status is CanaryStatus.ROLLED_BACK and state.step == 1


def test_state_round_trips_through_json_mid_plan() -> None:
    p = plan()
    rng = np.random.default_rng(5)
    state = start(p, new_state(p), T0)
    state, _ = evaluate(p, state, window(rng, 1000), window(rng, 19_000), T0 + 60)
    state, _ = evaluate(p, state, window(rng, 2000, fail=0.2), window(rng, 18_000), T0 + 120)
    assert (state.step, state.weight, state.consecutive_failures) == (1, 10, 1)

    saved = json.dumps({"plan": p.to_dict(), "state": state.to_dict()}, allow_nan=False)
    loaded = json.loads(saved)
    p2, restored = CanaryPlan.from_dict(loaded["plan"]), CanaryState.from_dict(loaded["state"])
    assert p2 == p and restored == state

    cand, base = window(rng, 2000), window(rng, 18_000)
    a = evaluate(p, state, cand, base, T0 + 180)
    b = evaluate(p2, restored, cand, base, T0 + 180)
    assert a == b and a[0].weight == 25


def test_pause_resume_abort_and_terminal_states() -> None:
    p = plan()
    rng = np.random.default_rng(6)
    state = start(p, new_state(p), T0)
    paused = pause(state, T0 + 10, "investigating")
    _, d = evaluate(p, paused, window(rng, 1000), window(rng, 19_000), T0 + 100)
    assert d.action is Action.HOLD and "paused" in d.reasons[0]
    resumed = resume(paused, T0 + 200)
    assert resumed.step_started_at == T0 + 200 and resumed.status is CanaryStatus.RUNNING
    aborted = abort(resumed, T0 + 210, "bad dashboards")
    assert aborted.status is CanaryStatus.ROLLED_BACK and aborted.weight == 0
    assert [d.action for d in aborted.history] == [
        Action.START,
        Action.PAUSE,
        Action.RESUME,
        Action.ROLLBACK,
    ]
    with pytest.raises(ValueError):
        abort(aborted, T0 + 220)
    with pytest.raises(ValueError):
        start(p, state, T0)  # already running
    with pytest.raises(ValueError):
        evaluate(plan(candidate="v3"), state, ArmMetrics(), ArmMetrics(), T0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": ()}, "steps"),
        ({"steps": (10, 5, 100)}, "steps"),
        ({"steps": (5, 5, 100)}, "steps"),
        ({"steps": (0, 50, 100)}, "steps"),
        ({"steps": (5, 50, 120)}, "steps"),
        ({"steps": (5, 50)}, "steps"),
        ({"candidate": "v1"}, "candidate"),
        ({"interval_s": -1}, "interval_s"),
        ({"min_requests": -5}, "min_requests"),
    ],
)
def test_plan_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        plan(**changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_error_rate": 1.5}, "gates.max_error_rate"),
        ({"max_fallback_rate": -0.1}, "gates.max_fallback_rate"),
        ({"max_p99_ratio": 0}, "gates.max_p99_ratio"),
        ({"min_shadow_agreement": 2}, "gates.min_shadow_agreement"),
        ({"min_accuracy_delta": -3}, "gates.min_accuracy_delta"),
        ({"failures_to_rollback": 0}, "gates.failures_to_rollback"),
    ],
)
def test_gate_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        GateConfig(**changes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown field"):
        GateConfig.from_dict({"max_eror_rate": 0.1})


def test_accuracy_shadow_and_latency_gates() -> None:
    gates = GateConfig(
        max_p99_ratio=1.5,
        max_p99_ms=50,
        min_shadow_agreement=0.9,
        min_shadow_samples=100,
        min_accuracy_delta=-0.02,
        min_feedback=200,
    )
    rng = np.random.default_rng(7)
    cand, base = window(rng, 1000, median_ms=12.0), window(rng, 1000, median_ms=5.0)
    cand.feedback_correct, cand.feedback_total = 100, 150  # below min_feedback: skipped
    base.feedback_correct, base.feedback_total = 900, 1000
    results, metrics = check_gates(gates, cand, base, shadow=None)
    status = {r.name: r.status for r in results}
    assert status == {
        "error_rate": "pass",
        "fallback_rate": "pass",
        "p99_ms": "pass",
        "p99_ratio": "fail",
        "shadow_agreement": "skip",
        "accuracy_delta": "skip",
        "accuracy_noninferiority": "skip",  # on by default: 150 labels, needs 200
        "srm": "skip",  # on by default: no expected share passed
        "disagreement": "pass",  # on by default: the baseline agreed with every answer
        "label_shift": "skip",  # on by default: no predicted labels counted
    }
    assert metrics["p99_ratio"] == pytest.approx(2.4, rel=0.15)

    cand.feedback_correct, cand.feedback_total = 340, 400  # 0.85 vs 0.90: a 5-point drop
    shadow = ShadowStats(compared=200, agreed=170)  # 0.85 < 0.9
    results, metrics = check_gates(gates, cand, base, shadow=shadow)
    status = {r.name: r.status for r in results}
    assert status["accuracy_delta"] == "fail" and status["shadow_agreement"] == "fail"
    assert metrics["accuracy_delta"] == pytest.approx(-0.05)
    msg = next(r.message for r in results if r.name == "accuracy_delta")
    assert "0.8500" in msg and "0.9000" in msg and "-0.0200" in msg
