from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from router.controlplane.analysis import (
    build_report,
    min_sample_size,
    two_proportion_ztest,
    wilson_interval,
)
from router.dataplane.measures import ArmMetrics, LatencyHistogram

ZTEST_CASES = [
    (45, 100, 30, 100),
    (850, 1000, 820, 1000),
    (510, 600, 4120, 5000),
    (3, 10, 7, 12),
    (9_120, 10_000, 9_050, 10_000),
    (0, 50, 5, 50),
]


@pytest.mark.parametrize(("s1", "n1", "s2", "n2"), ZTEST_CASES)
def test_ztest_matches_scipy(s1: int, n1: int, s2: int, n2: int) -> None:
    # Reference 1: the pooled z through scipy's normal distribution.
    p = (s1 + s2) / (n1 + n2)
    z_ref = (s1 / n1 - s2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    p_ref = 2 * stats.norm.sf(abs(z_ref))
    # Reference 2, independent of the z formula: a 2x2 chi-square test without
    # continuity correction is the same test (chi2 = z**2).
    chi2, p_chi, _, _ = stats.chi2_contingency([[s1, n1 - s1], [s2, n2 - s2]], correction=False)
    z, pv = two_proportion_ztest(s1, n1, s2, n2)
    assert z == pytest.approx(z_ref, rel=1e-12)
    assert pv == pytest.approx(p_ref, rel=1e-9, abs=1e-300)
    assert z * z == pytest.approx(chi2, rel=1e-9)
    assert pv == pytest.approx(p_chi, rel=1e-9, abs=1e-300)


def test_ztest_known_value_and_edges() -> None:
    z, p = two_proportion_ztest(45, 100, 30, 100)
    assert z == pytest.approx(2.1909, abs=1e-4)
    assert p == pytest.approx(0.02846, abs=1e-5)
    assert two_proportion_ztest(30, 100, 45, 100)[0] == pytest.approx(-z)
    assert two_proportion_ztest(10, 10, 20, 20) == (0.0, 1.0)  # identical, no variance
    with pytest.raises(ValueError):
        two_proportion_ztest(1, 0, 1, 10)
    with pytest.raises(ValueError):
        two_proportion_ztest(11, 10, 1, 10)


@pytest.mark.parametrize(
    ("k", "n"),
    [(0, 10), (1, 10), (5, 10), (10, 10), (85, 100), (340, 400), (9_990, 10_000), (3, 7)],
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(1, 4, confidence=1.0)


def test_wilson_coverage_simulation() -> None:
    rng = np.random.default_rng(7)
    p, n, trials = 0.85, 400, 2000
    hits = 0
    for k in rng.binomial(n, p, size=trials):
        lo, hi = wilson_interval(int(k), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / trials <= 0.97


def test_min_sample_size_known_values() -> None:
    # 0.5 vs 0.6, alpha 0.05 two-sided, power 0.8: the textbook ~388 per arm.
    assert min_sample_size(0.5, 0.1) == 388
    n_small, n_big = min_sample_size(0.85, 0.02), min_sample_size(0.85, 0.05)
    assert n_small > n_big > 0
    assert min_sample_size(0.85, 0.02, power=0.9) > n_small
    assert min_sample_size(0.99, 0.02) > 0  # 0.99 + 0.02 > 1: tests 0.97 instead
    with pytest.raises(ValueError):
        min_sample_size(0.5, 0.0)


def test_min_sample_size_gives_the_stated_power() -> None:
    """Simulated: at the computed n, the z-test detects the effect ~80 % of the time."""
    rng = np.random.default_rng(3)
    p1, mde = 0.5, 0.1
    n = min_sample_size(p1, mde)
    a = rng.binomial(n, p1, size=1500)
    b = rng.binomial(n, p1 + mde, size=1500)
    power = np.mean(
        [two_proportion_ztest(int(x), n, int(y), n)[1] < 0.05 for x, y in zip(a, b, strict=True)]
    )
    assert 0.76 <= power <= 0.84


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.999])
def test_histogram_quantiles_match_numpy(q: float) -> None:
    rng = np.random.default_rng(11)
    data = rng.lognormal(mean=2.0, sigma=0.8, size=20_000)  # median ~7 ms, long tail
    h = LatencyHistogram()
    for x in data:
        h.record(float(x))
    ref = float(np.percentile(data, q * 100))
    got = h.quantile(q)
    assert got is not None
    assert abs(got - ref) / ref < 0.05


def test_histogram_extremes_merge_and_round_trip() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) is None and h.count == 0
    for ms in (0.001, 0.5, 3.0, 3.0, 70_000.0):
        h.record(ms)
    assert h.quantile(0.0) == 0.001 and h.quantile(1.0) == 70_000.0
    with pytest.raises(ValueError):
        h.record(-1.0)
    with pytest.raises(ValueError):
        h.record(float("nan"))
    assert h.n_buckets < 400  # fixed memory

    a, b = LatencyHistogram(), LatencyHistogram()
    rnd = random.Random(1)
    xs = [rnd.expovariate(0.1) for _ in range(2000)]
    for x in xs[:1000]:
        a.record(x)
    for x in xs[1000:]:
        b.record(x)
    both = LatencyHistogram()
    for x in xs:
        both.record(x)
    merged = a.merge(b)
    assert merged.count == 2000 and a.count == 1000  # inputs unchanged
    assert merged.counts == both.counts
    for q in (0.5, 0.99):
        assert merged.quantile(q) == both.quantile(q)

    data = json.loads(json.dumps(merged.to_dict()))
    assert len(data["buckets"]) < merged.n_buckets  # sparse
    back = LatencyHistogram.from_dict(data)
    assert back == merged

    window = both.subtract(a)
    assert window.counts == b.counts and window.count == 1000
    with pytest.raises(ValueError):
        a.subtract(both)


def test_arm_metrics_record_merge_subtract_round_trip() -> None:
    m = ArmMetrics()
    m.record(5.0)
    m.record(7.0, fallback=True)
    m.record(None, error=True)
    m.record_feedback(True, n=3)
    m.record_feedback(False)
    assert (m.requests, m.errors, m.fallbacks, m.answered) == (3, 1, 1, 1)
    assert m.error_rate == pytest.approx(1 / 3) and m.accuracy == 0.75
    snapshot = ArmMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert snapshot == m
    m.record(9.0)
    m.record_feedback(True)
    window = m.subtract(snapshot)
    assert (window.requests, window.feedback_total, window.latency.count) == (1, 1, 1)
    assert snapshot.merge(window).to_dict()["requests"] == m.requests
    assert ArmMetrics().error_rate is None and ArmMetrics().accuracy is None


def _arm(requests: int, errors: int, correct: int, total: int, ms: float) -> ArmMetrics:
    m = ArmMetrics(
        requests=requests,
        errors=errors,
        answered=requests - errors,
        feedback_correct=correct,
        feedback_total=total,
    )
    m.latency.record(ms, n=requests)
    return m


def test_report_fields() -> None:
    arms = {
        "v1": _arm(9000, 9, 7650, 9000, 4.0),
        "v2": _arm(1000, 2, 880, 1000, 6.0),
        "v3": ArmMetrics(),
    }
    report = build_report(arms, "v1", weights={"v1": 90, "v2": 10, "v3": 0})
    json.dumps(report, allow_nan=False)  # JSON-ready, no NaN
    base, cand, empty = report["arms"]["v1"], report["arms"]["v2"], report["arms"]["v3"]
    keys = {
        "requests",
        "traffic_share",
        "weight",
        "error_rate",
        "fallback_rate",
        "p50_ms",
        "p99_ms",
        "accuracy",
        "accuracy_ci95",
        "feedback_n",
        "z",
        "p_value",
        "significant",
        "min_sample_size",
        "sample_size_reached",
        "baseline",
        "accuracy_delta",
    }
    assert keys <= set(base) and set(base) == set(cand) == set(empty)
    assert base["baseline"] and base["z"] is None and base["p_value"] is None
    assert cand["traffic_share"] == pytest.approx(0.1) and cand["weight"] == 10
    assert cand["error_rate"] == pytest.approx(0.002)
    assert cand["p50_ms"] == pytest.approx(6.0, rel=0.03)
    assert cand["accuracy"] == pytest.approx(0.88)
    lo, hi = cand["accuracy_ci95"]
    assert lo < 0.88 < hi
    z, p = two_proportion_ztest(880, 1000, 7650, 9000)
    assert cand["z"] == pytest.approx(z) and cand["p_value"] == pytest.approx(p)
    assert cand["significant"] is (p < 0.05)
    assert cand["accuracy_delta"] == pytest.approx(0.03)
    assert cand["min_sample_size"] == min_sample_size(0.85, 0.02)
    assert cand["min_sample_size"] > 1000 and cand["sample_size_reached"] is False
    assert empty["requests"] == 0 and empty["error_rate"] is None and empty["p99_ms"] is None
    assert empty["accuracy_ci95"] is None and empty["z"] is None
    assert report["totals"]["requests"] == 10_000
    assert report["totals"]["feedback_n"] == 10_000
    with pytest.raises(ValueError):
        build_report(arms, "v9", weights={})


def test_assigned_counts_the_policy_s_choices_apart_from_pins() -> None:
    m = ArmMetrics()
    m.record(5.0, assigned=True)
    m.record(6.0)  # pinned by X-Model-Version: a request, not an assignment
    m.record(None, error=True, assigned=True)
    assert (m.requests, m.assigned) == (3, 2)
    snapshot = ArmMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert snapshot == m
    m.record(7.0, assigned=True)
    assert m.subtract(snapshot).assigned == 1 and snapshot.merge(m).assigned == 5
    old = m.to_dict()
    del old["assigned"]  # a report from a router that does not count assignments
    assert ArmMetrics.from_dict(old).assigned == 0


def test_report_sequential_holm_latency_srm_and_verdicts() -> None:
    from router.controlplane.split import SplitTally
    from router.controlplane.stats import holm, msprt_difference

    arms = {
        "v1": _arm(20_000, 0, 18_000, 20_000, 4.0),
        "v2": _arm(10_000, 0, 9_500, 10_000, 4.0),  # +5 points
        "v3": _arm(10_000, 0, 9_010, 10_000, 6.0),  # +0.1 point, slower
        "v4": _arm(50, 0, 10, 20, 4.0),  # 20 labels: too few for the sequential test
    }
    split = SplitTally()
    split.add({"v1": 10_400, "v2": 9_600}, {"v1": 50, "v2": 50})
    report = build_report(arms, "v1", weights={"v1": 50, "v2": 25, "v3": 25, "v4": 0},
                          split=split.test())
    json.dumps(report, allow_nan=False)
    rows = report["arms"]
    assert set(rows["v1"]) == set(rows["v2"]) == set(rows["v4"])
    seqs = {v: msprt_difference(arms[v].feedback_correct, arms[v].feedback_total,
                                18_000, 20_000, tau=0.02)
            for v in ("v2", "v3")}
    adjusted = holm([seqs["v2"].p_value, seqs["v3"].p_value])
    assert rows["v2"]["seq_p_value"] == pytest.approx(seqs["v2"].p_value)
    assert rows["v2"]["seq_p_value_holm"] == pytest.approx(adjusted[0])
    assert rows["v3"]["seq_p_value_holm"] == pytest.approx(adjusted[1])
    assert rows["v2"]["seq_significant"] is True and rows["v3"]["seq_significant"] is False
    lo, hi = rows["v2"]["seq_ci"]
    assert lo < 0.05 < hi and lo > 0
    slo, shi = rows["v2"]["seq_ci_simultaneous"]
    assert slo < lo and shi > hi  # at alpha / 2 for two candidates
    assert rows["v4"]["seq_p_value"] is None and rows["v4"]["p_value"] is not None
    assert rows["v2"]["p_value_holm"] is not None and rows["v1"]["p_value_holm"] is None
    assert rows["v3"]["latency_test"]["shift_ratio"] == pytest.approx(1.5, rel=0.05)
    assert rows["v3"]["latency_test"]["p_value"] < 1e-6
    assert rows["v2"]["latency_test"]["p_value"] == 1.0  # identical latencies
    assert report["srm"]["available"] and report["srm"]["flagged"]
    assert report["tau"] == 0.02 and "Johari" in report["methods"]["sequential"]
    assert "Lindon" in report["methods"]["srm"] and "Holm" in report["methods"][
        "multiple_comparisons"]
    v2 = report["verdicts"]["v2"]
    assert v2 == rows["v2"]["verdict"]
    assert v2.startswith("v2 is better than v1 in accuracy by 5.0 pp (always-valid 95 % "
                         "interval ")
    assert "Holm-adjusted p" in v2 and "SAMPLE-RATIO MISMATCH" in v2
    assert "no accuracy difference shown yet" in report["verdicts"]["v3"]
    assert "latency: slower, typically x1.5" in report["verdicts"]["v3"]
    assert "needs 30 on each side" in report["verdicts"]["v4"]
    assert rows["v1"]["verdict"] == "v1 is the baseline"

    fine = SplitTally()
    fine.add({"v1": 10_000, "v2": 5_000, "v3": 5_000}, {"v1": 50, "v2": 25, "v3": 25})
    ok = build_report(arms, "v1", weights={"v1": 50, "v2": 25, "v3": 25}, split=fine.test())
    assert ok["srm"]["flagged"] is False
    assert ok["verdicts"]["v2"].endswith("; no sample-ratio mismatch")
    none = build_report(arms, "v1", weights={"v1": 50, "v2": 25, "v3": 25})
    assert none["srm"]["available"] is False and none["srm"]["flagged"] is None
    assert "sample-ratio check unavailable" in none["verdicts"]["v2"]


def test_latency_comparison_reads_the_histograms() -> None:
    from router.controlplane.analysis import compare_latency

    rng = np.random.default_rng(21)
    a, b = LatencyHistogram(), LatencyHistogram()
    for x in rng.lognormal(np.log(12.0), 0.3, 3000):
        a.record(float(x))
    for x in rng.lognormal(np.log(10.0), 0.3, 3000):
        b.record(float(x))
    lat = compare_latency(a, b)
    assert lat is not None and lat.p_slower < 1e-10 and lat.prob_slower > 0.6
    assert lat.shift_ratio == pytest.approx(1.2, rel=0.06)
    assert compare_latency(LatencyHistogram(), b) is None


def test_report_quality_without_labels() -> None:
    from router.controlplane.analysis import (
        DISAGREEMENT_MATERIAL,
        LABEL_SHIFT_ALPHA,
        LABEL_SHIFT_MATERIAL,
        MIN_COMPARED,
    )
    from router.controlplane.canary import GateConfig
    from router.controlplane.stats import label_shift

    defaults = GateConfig()  # what the verdict calls material is what the canary fails on
    gate_defaults = (defaults.max_disagreement, defaults.max_label_shift,
                     defaults.label_shift_alpha, defaults.min_compared)
    assert gate_defaults == (DISAGREEMENT_MATERIAL, LABEL_SHIFT_MATERIAL, LABEL_SHIFT_ALPHA,
                             MIN_COMPARED)

    def arm(labels: dict[int, int], compared: int = 0, disagreed: int = 0) -> ArmMetrics:
        m = _arm(sum(labels.values()), 0, 0, 0, 4.0)
        m.labels, m.compared, m.disagreed = dict(labels), compared, disagreed
        return m

    arms = {
        "v1": arm({0: 500, 1: 300, 2: 200}),
        "v2": arm({0: 240, 1: 160, 2: 100}, compared=100, disagreed=4),  # agrees, same classes
        "v4": arm({0: 20, 1: 40, 2: 180}, compared=240, disagreed=170),  # another model
        "v5": arm({2: 30}, compared=20, disagreed=20),  # too few answers to say
        "v6": ArmMetrics(),
    }
    report = build_report(arms, "v1", weights={"v1": 70, "v2": 10, "v4": 10, "v5": 10, "v6": 0})
    json.dumps(report, allow_nan=False)
    rows = report["arms"]
    keys = {"disagreement", "disagreement_ci95", "compared", "label_distribution",
            "label_shift", "label_shift_p_value"}
    assert all(keys <= set(r) for r in rows.values())
    assert keys - {"label_shift", "label_shift_p_value"} <= set(report["totals"])
    base, v2, v4, v5, v6 = (rows[v] for v in ("v1", "v2", "v4", "v5", "v6"))
    assert base["label_distribution"] == {"0": 0.5, "1": 0.3, "2": 0.2}
    assert base["compared"] == 0 and base["disagreement"] is None
    assert base["disagreement_ci95"] is None and base["label_shift"] is None
    assert v4["compared"] == 240 and v4["disagreement"] == pytest.approx(170 / 240)
    assert v4["disagreement_ci95"] == pytest.approx(list(wilson_interval(170, 240)))
    tvd, p = label_shift(arms["v4"].labels, arms["v1"].labels)  # type: ignore[misc]
    assert v4["label_shift"] == pytest.approx(tvd) and v4["label_shift_p_value"] == p
    assert tvd == pytest.approx(0.55) and p < 1e-10
    assert v2["label_shift"] == pytest.approx(0.02) and v2["label_shift_p_value"] > 0.5
    assert v5["disagreement"] == 1.0 and v5["label_shift"] is None  # 30 answers: under 50
    assert v5["label_distribution"] == {"2": 1.0}
    assert v6["label_distribution"] is None and v6["disagreement"] is None
    assert v6["compared"] == 0 and v6["label_shift_p_value"] is None
    verdicts = report["verdicts"]
    assert ("v4 disagrees with v1 on 71 % of 240 compared answers (95 % interval 65 to 76 %)"
            in verdicts["v4"])
    assert "v4 predicts other classes than v1 (total variation 0.55, chi-square p < 0.0001)" \
        in verdicts["v4"]
    for quiet in ("v2", "v5", "v6"):  # not material, or too little data: not in the line
        assert "disagrees" not in verdicts[quiet] and "other classes" not in verdicts[quiet]
    assert "Wilson" in report["methods"]["disagreement"]
    assert "chi-square" in report["methods"]["label_shift"]
