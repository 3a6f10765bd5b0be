"""The canary's quality gates: sequential non-inferiority on accuracy, the window's
sample-ratio test and the latency distribution test, and decision lines that name them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from router.controlplane.canary import (
    QUALITY_GATES,
    Action,
    CanaryPlan,
    CanaryState,
    CanaryStatus,
    GateConfig,
    Verdict,
    check_gates,
    evaluate,
    expected_share,
    new_state,
    start,
    window_srm,
)
from router.dataplane.measures import ArmMetrics

T0 = 1_700_000_000.0
TOTAL = 20_000  # requests of both arms per window


def plan(**gates: object) -> CanaryPlan:
    return CanaryPlan("v2", "v1", steps=(5, 10, 25, 50, 100), interval_s=60, min_requests=200,
                      gates=replace(GateConfig(), **gates))  # type: ignore[arg-type]


def arm(rng: np.random.Generator, n: int, *, labels: int = 0, accuracy: float = 0.95,
        median_ms: float = 5.0, assigned: bool = True) -> ArmMetrics:
    m = ArmMetrics()
    for ms in rng.lognormal(np.log(median_ms), 0.3, n):
        m.record(float(ms), assigned=assigned)
    m.record_comparison(n, 0)  # the baseline agrees: only the labels judge the answers here
    if labels:
        correct = int(rng.binomial(labels, accuracy))
        m.record_feedback(True, correct)
        m.record_feedback(False, labels - correct)
    return m


def run(p: CanaryPlan, rng: np.random.Generator, *, labels: int, cand_accuracy: float,
        base_accuracy: float = 0.95, max_evals: int = 10, weights: bool = False
        ) -> CanaryState:
    state = start(p, new_state(p), T0)
    now = T0
    for _ in range(max_evals):
        if state.done:
            break
        now += p.interval_s
        n_cand = round(TOTAL * state.weight / 100)
        cand = arm(rng, n_cand, labels=labels, accuracy=cand_accuracy)
        base = arm(rng, TOTAL - n_cand, labels=labels if n_cand < TOTAL else 0,
                   accuracy=base_accuracy)
        w = {"v2": state.weight, "v1": 100 - state.weight} if weights else None
        state, _ = evaluate(p, state, cand, base, now, weights=w)
    return state


def test_a_28_percent_candidate_is_rolled_back_not_promoted() -> None:
    """The default gates alone: min_accuracy_delta is off, the sequential gate is on."""
    p = plan()
    assert p.gates.min_accuracy_delta is None and p.gates.accuracy_margin == 0.02
    state = run(p, np.random.default_rng(1), labels=300, cand_accuracy=0.28)
    assert state.status is CanaryStatus.ROLLED_BACK and state.step == 0
    assert [d.verdict for d in state.history[1:]] == [Verdict.FAIL] * 3
    last = state.history[-1]
    line = next(r for r in last.reasons if r.startswith("accuracy_noninferiority: fail"))
    assert "worse by more than the margin" in line and "-2.00 pp" in line
    assert last.metrics["accuracy_ci_hi"] is not None and last.metrics["accuracy_ci_hi"] < -0.5


def test_an_equally_accurate_candidate_passes_and_promotes() -> None:
    state = run(plan(), np.random.default_rng(2), labels=3000, cand_accuracy=0.95,
                weights=True)
    assert state.status is CanaryStatus.PROMOTED, [d.reasons[-1] for d in state.history]
    judged = [d for d in state.history if d.verdict in (Verdict.PASS, Verdict.FAIL)]
    assert len(judged) == 5
    for d in judged:
        assert "quality gates: " in d.reasons[-1]
        for name in QUALITY_GATES:  # every gate of a classifier (the error gate is not one)
            if name != "error_noninferiority":
                assert name in d.reasons[-1], (name, d.reasons[-1])
        assert "error_noninferiority" not in d.reasons[-1]
    first = judged[0].reasons[-1]
    assert "accuracy_noninferiority pass (+" in first or "accuracy_noninferiority pass (-" in first
    assert "srm pass (p = 1)" in first and "latency_shift off" in first
    # The 100 % step: no baseline labels in the window, those of the earlier windows count.
    assert "accuracy_noninferiority pass" in judged[-1].reasons[-1]
    assert state.baseline_labels[1] == 4 * 3000 and state.candidate_labels[1] == 5 * 3000


def test_labels_add_up_over_windows_and_survive_json() -> None:
    p = plan()
    rng = np.random.default_rng(3)
    state = start(p, new_state(p), T0)
    state, d = evaluate(p, state, arm(rng, 1000, labels=150), arm(rng, 19_000, labels=150),
                        T0 + 60)
    gate = next(r for r in d.reasons if r.startswith("accuracy_noninferiority"))
    assert gate.startswith("accuracy_noninferiority: skip, lacks data: 150 candidate and 150 "
                           "baseline labels since the canary started, needs 200 each")
    assert "accuracy_noninferiority skip (lacks data" in d.reasons[-1]
    assert "srm skip (lacks data: the experiment's weights were not passed" in d.reasons[-1]
    assert state.candidate_labels[1] == 150 and d.action is Action.ADVANCE
    restored = CanaryState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    _, d2 = evaluate(p, restored, arm(rng, 2000, labels=150), arm(rng, 18_000, labels=150),
                     T0 + 120)
    gate = next(r for r in d2.reasons if r.startswith("accuracy_noninferiority"))
    assert "over 300 and 300 labels" in gate and "skip, lacks" not in gate
    assert d2.metrics["candidate_labels_total"] == 300
    older = state.to_dict()
    del older["labels"]  # a state saved before the gate existed
    assert CanaryState.from_dict(older).candidate_labels == (0, 0)


def test_inconclusive_accuracy_neither_passes_nor_fails() -> None:
    p = plan()
    rng = np.random.default_rng(4)
    cand, base = arm(rng, 1000, labels=250, accuracy=0.93), arm(rng, 19_000, labels=250)
    results, _ = check_gates(p.gates, cand, base)
    gate = next(r for r in results if r.name == "accuracy_noninferiority")
    assert gate.status == "skip" and "inconclusive" in gate.message


def test_srm_gate_against_the_weights_in_force() -> None:
    p = plan()
    rng = np.random.default_rng(5)
    state = start(p, new_state(p), T0)
    weights = {"v2": 5.0, "v1": 95.0}
    ok, d = evaluate(p, state, arm(rng, 1000), arm(rng, 19_000), T0 + 60, weights=weights)
    assert d.action is Action.ADVANCE
    assert any(r.startswith("srm: pass, candidate 1000 of 20000 assignments = 5.00 %")
               for r in d.reasons)
    # 10 % step after 5 %: 12 % of the candidate's share missing, well past the 5 s grace.
    weights = {"v2": 10.0, "v1": 90.0}
    _, bad = evaluate(p, ok, arm(rng, 1760), arm(rng, 18_240), T0 + 120, weights=weights)
    assert bad.verdict is Verdict.FAIL
    srm = next(r for r in bad.reasons if r.startswith("srm:"))
    assert "srm: fail" in srm and "sample-ratio mismatch" in srm
    assert "expected 9.58 % to 10.00 %" in srm  # 5 s of 60 s may be at the previous 5 %
    assert bad.metrics["srm_p_value"] is not None and bad.metrics["srm_p_value"] < 1e-3
    # The same deficit in the first seconds after a change is the routers' lag, not a mismatch.
    lagging = replace(ok, step_started_at=T0 + 60)
    short = replace(p, interval_s=4)
    _, fine = evaluate(short, lagging, arm(rng, 1760), arm(rng, 18_240), T0 + 64,
                       weights=weights)
    assert fine.action is Action.ADVANCE, fine.reasons
    # Pins are not assignments: routers that do not count them apart give no data.
    _, none = evaluate(p, ok, arm(rng, 2000, assigned=False), arm(rng, 18_000, assigned=False),
                       T0 + 120, weights=weights)
    assert any(r.startswith("srm: skip, lacks data: no assignment counts") for r in none.reasons)


def test_srm_gate_with_another_candidate_and_at_100_percent() -> None:
    share = expected_share({"v2": 20, "v1": 50, "v3": 30}, "v2", "v1", 20.0, 60, 5)
    assert share == pytest.approx((20 / 70, 20 / 70))
    assert expected_share({"v2": 25, "v1": 75}, "v2", "v1", 10.0, 60, 6) == pytest.approx(
        (0.235, 0.25))
    assert expected_share({"v2": 0, "v1": 0}, "v2", "v1", None, 60, 5) is None
    # At 100 % the baseline gets no assignments; some in the grace seconds are the lag.
    full = expected_share({"v2": 100, "v1": 0}, "v2", "v1", 50.0, 60, 5)
    assert full is not None and full[1] == 1.0
    assert window_srm(20_000, 0, full) == 1.0
    assert window_srm(19_900, 100, full) == 1.0  # 0.5 % at the old weights: within 4.2 %
    assert window_srm(10_000, 10_000, (1.0, 1.0)) == 0.0  # impossible under the weights


@pytest.mark.parametrize(("x", "n", "share"), [(520, 1000, 0.5), (1760, 20_000, 0.1),
                                                (40, 100, 0.25)])
def test_window_srm_is_pearsons_chi_square_outside_the_band(x: int, n: int,
                                                            share: float) -> None:
    ref = stats.chisquare([x, n - x], [n * share, n * (1 - share)]).pvalue
    assert window_srm(x, n - x, (share, share)) == pytest.approx(ref, rel=1e-9)
    assert window_srm(round(n * share), n - round(n * share), (share, share)) == 1.0


def test_latency_shift_gate() -> None:
    gates = GateConfig(max_latency_shift=1.2, max_p99_ratio=None)
    rng = np.random.default_rng(6)
    base = arm(rng, 5000, median_ms=10.0)
    slow, metrics = check_gates(gates, arm(rng, 2000, median_ms=15.0), base)
    gate = next(r for r in slow if r.name == "latency_shift")
    assert gate.status == "fail" and "Hodges-Lehmann" in gate.message
    assert metrics["latency_shift_ratio"] == pytest.approx(1.5, rel=0.05)
    a_bit, metrics = check_gates(gates, arm(rng, 2000, median_ms=10.5), base)
    gate = next(r for r in a_bit if r.name == "latency_shift")
    assert gate.status == "pass"  # slower, but by less than the tolerated 20 %
    assert metrics["latency_p_slower"] is not None and metrics["latency_p_slower"] < 0.01
    empty, _ = check_gates(gates, arm(rng, 2000), ArmMetrics())
    gate = next(r for r in empty if r.name == "latency_shift")
    assert gate.status == "skip" and "lacks data" in gate.message
    assert "latency_shift" not in {r.name for r in check_gates(GateConfig(), base, base)[0]}


@pytest.mark.parametrize(("changes", "field"), [
    ({"accuracy_margin": 1.5}, "gates.accuracy_margin"),
    ({"accuracy_margin": -0.01}, "gates.accuracy_margin"),
    ({"accuracy_alpha": 0}, "gates.accuracy_alpha"),
    ({"srm_alpha": 1.0}, "gates.srm_alpha"),
    ({"srm_grace_s": -1}, "gates.srm_grace_s"),
    ({"max_latency_shift": 0.9}, "gates.max_latency_shift"),
    ({"latency_alpha": 2}, "gates.latency_alpha"),
])
def test_new_gate_fields_are_validated(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        GateConfig(**changes)  # type: ignore[arg-type]
    off = GateConfig.from_dict({"accuracy_margin": None, "srm_alpha": None})
    assert off.accuracy_margin is None and off.srm_alpha is None


# ------------------------------------------------------------ quality without labels


def _answers(counts: dict[int, int], compared: int = 0, disagreed: int = 0) -> ArmMetrics:
    m = ArmMetrics(requests=sum(counts.values()), answered=sum(counts.values()))
    m.labels = dict(counts)
    m.record_comparison(compared, disagreed)
    return m


def test_disagreement_gate_fails_only_when_the_interval_is_above_the_limit() -> None:
    gates = GateConfig(max_label_shift=None, srm_alpha=None, accuracy_margin=None)
    base = _answers({0: 500, 1: 500})

    def status(compared: int, disagreed: int) -> str:
        results, _ = check_gates(gates, _answers({0: 50, 1: 50}, compared, disagreed), base)
        return {r.name: r.status for r in results}["disagreement"]

    assert status(49, 40) == "skip"  # fewer than min_compared (50) rows compared
    assert status(100, 5) == "pass"  # a good model: 5 %
    assert status(100, 25) == "pass"  # 25 %, interval 17.5-34.3 %: not shown to be above 20 %
    assert status(100, 31) == "fail"  # interval 22.8-40.6 %: above 20 %
    assert status(200, 176) == "fail"  # a constant model against a good one


def test_label_shift_gate_needs_a_real_and_material_difference() -> None:
    from scipy.stats import chi2_contingency

    from router.controlplane.canary import label_shift

    a, b = {0: 60, 1: 30, 2: 10}, {0: 40, 1: 45, 2: 15}
    tvd, p = label_shift(a, b)  # type: ignore[misc]
    table = [[a[k] for k in (0, 1, 2)], [b[k] for k in (0, 1, 2)]]
    assert p == pytest.approx(chi2_contingency(table, correction=False).pvalue, rel=1e-6)
    assert tvd == pytest.approx(0.2)
    gates = GateConfig(max_disagreement=None, srm_alpha=None, accuracy_margin=None)

    def status(cand: dict[int, int], base: dict[int, int]) -> str:
        results, _ = check_gates(gates, _answers(cand), _answers(base))
        return {r.name: r.status for r in results}["label_shift"]

    assert status({0: 30}, {0: 900, 1: 100}) == "skip"  # 30 candidate answers, needs 50
    assert status({4: 300}, {k: 100 for k in range(8)}) == "fail"  # always "Car"
    assert status({0: 105, 1: 95}, {0: 1000, 1: 1000}) == "pass"  # the same distribution
    # Material but not shown (p > 0.001 with 60 answers): no verdict against it.
    assert status({0: 40, 1: 20}, {0: 500, 1: 500}) == "pass"
    # Real but small (distance 0.05 < 0.2 with 20,000 answers each): passes.
    assert status({0: 11_000, 1: 9_000}, {0: 10_000, 1: 10_000}) == "pass"


def test_a_window_is_judged_only_once_a_gate_on_the_answers_has_data() -> None:
    from router.controlplane.canary import Action, Verdict, evaluate

    p = plan(srm_alpha=None)
    state = start(p, new_state(p), T0)
    quiet = ArmMetrics(requests=300, answered=300)  # healthy rates, nothing on the answers
    state2, d = evaluate(p, state, quiet, ArmMetrics(requests=5000, answered=5000), T0 + 60)
    assert (d.action, d.verdict) == (Action.HOLD, Verdict.WAIT)
    assert "no gate on the answers has data yet" in d.reasons[-1]
    assert "disagreement" in d.reasons[-1] and "lacks data" in d.reasons[-1]
    assert state2.window == state.window  # the window goes on: its data accumulates
    quiet.record_comparison(60, 2)
    _, d = evaluate(p, state2, quiet, ArmMetrics(requests=5000, answered=5000), T0 + 70)
    assert d.action is Action.ADVANCE


def test_a_constant_model_is_rolled_back_without_any_label() -> None:
    from router.controlplane.canary import CanaryStatus, evaluate

    p = plan(srm_alpha=None, failures_to_rollback=2)
    state, now = start(p, new_state(p), T0), T0
    for _ in range(2):
        now += 60
        cand = _answers({4: 300}, compared=60, disagreed=53)  # always "Car"
        base = _answers({k: 600 for k in range(8)})
        state, d = evaluate(p, state, cand, base, now)
    assert state.status is CanaryStatus.ROLLED_BACK
    assert "disagreement: fail" in " ".join(d.reasons) and "label_shift: fail" in " ".join(
        d.reasons)


def test_while_comparisons_flow_a_window_waits_for_the_disagreement_gate() -> None:
    from router.controlplane.canary import Action, evaluate

    p = plan(srm_alpha=None)
    state = start(p, new_state(p), T0)
    # 28 % accurate, but its labels are spread like the baseline's: label_shift passes.
    cand = _answers({k: 40 for k in range(8)}, compared=30, disagreed=22)
    base = _answers({k: 400 for k in range(8)})
    state2, d = evaluate(p, state, cand, base, T0 + 60)
    assert d.action is Action.HOLD and "waiting for the disagreement gate" in d.reasons[-1]
    assert "label_shift: pass" in " ".join(d.reasons)
    cand.record_comparison(30, 21)  # 60 rows compared, 43 disagreed
    _, d = evaluate(p, state2, cand, base, T0 + 70)
    assert d.action is Action.HOLD and "disagreement" in d.reasons[-1]  # failed window 1 of 3
    assert "disagreement: fail" in " ".join(d.reasons)
