"""Sample-ratio mismatch: the tests against scipy, exactness under weight changes, false alarms.

``python -m tests.unit.test_split`` prints the false-alarm figures quoted in
docs/experiments.md (Statistics).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats

from router.controlplane.split import (
    CONCENTRATION,
    MAX_PERIODS,
    SRM_ALPHA,
    SplitMonitor,
    SplitTally,
    SrmGauges,
    shares_of,
)
from router.controlplane.stats import dirichlet_multinomial_log_bf
from serve.telemetry import CONTROLLER_METRICS, MetricSpec, exported_names

RUNS, EVERY, HORIZON = 10_000, 200, 20_000


def tally(*periods: tuple[dict[str, int], dict[str, float]]) -> SplitTally:
    t = SplitTally()
    for counts, weights in periods:
        t.add(counts, weights)
    return t


def test_52_48_in_a_50_50_experiment_is_flagged_and_50_50_is_not() -> None:
    bad = tally(({"v1": 10_400, "v2": 9_600}, {"v1": 50, "v2": 50})).test()
    assert bad.flagged and bad.p_value < 1e-6 and bad.seq_p_value < SRM_ALPHA
    assert "SAMPLE-RATIO MISMATCH" in bad.describe()
    good = tally(({"v1": 10_050, "v2": 9_950}, {"v1": 50, "v2": 50})).test()
    assert not good.flagged and good.p_value > 0.1 and good.seq_p_value == 1.0
    assert good.describe().startswith("no sample-ratio mismatch")
    json.dumps(bad.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("counts", "weights"), [
    ({"v1": 10_400, "v2": 9_600}, {"v1": 50, "v2": 50}),
    ({"v1": 900, "v2": 70, "v3": 30}, {"v1": 90, "v2": 5, "v3": 5}),
    ({"a": 31, "b": 29, "c": 40, "d": 0}, {"a": 25, "b": 25, "c": 25, "d": 25}),
])
def test_one_period_is_pearsons_chi_square(counts: dict[str, int],
                                           weights: dict[str, float]) -> None:
    t = tally((counts, weights)).test()
    arms = sorted(counts)
    shares = shares_of(weights)
    n = sum(counts.values())
    ref = stats.chisquare([counts[a] for a in arms], [n * shares[a] for a in arms])
    assert t.chi2 == pytest.approx(ref.statistic, rel=1e-9)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
    assert t.df == len(arms) - 1
    assert t.expected == pytest.approx({a: n * shares[a] for a in arms})


def test_expected_counts_sum_over_weight_periods() -> None:
    # 10,000 requests at 90/10, then 10,000 at 50/50: expected 14,000 / 6,000.
    t = tally(({"v1": 9000, "v2": 1000}, {"v1": 90, "v2": 10}),
              ({"v1": 5000, "v2": 5000}, {"v1": 50, "v2": 50}))
    r = t.test()
    assert r.expected == pytest.approx({"v1": 14_000, "v2": 6_000})
    assert r.observed == {"v1": 14_000, "v2": 6_000} and r.p_value == pytest.approx(1.0)
    assert r.periods == 2 and not r.flagged
    # Against the last weights only (50/50), the same counts would look like a 70/30 split.
    naive = tally(({"v1": 14_000, "v2": 6_000}, {"v1": 50, "v2": 50})).test()
    assert naive.flagged
    # The statistic uses the summed covariance: for two arms, d^2 / sum N_p pi_p (1 - pi_p).
    t.add({"v1": 60, "v2": 0}, {"v1": 50, "v2": 50})
    r = t.test()
    var = 10_000 * 0.9 * 0.1 + 10_060 * 0.25
    assert r.chi2 == pytest.approx((14_060 - 14_030) ** 2 / var, rel=1e-9)


def test_the_chi_square_is_calibrated_under_weight_changes() -> None:
    """Through SplitTally: 2,000 experiments of 5,000 at 90/10 then 5,000 at 50/50."""
    rng = np.random.default_rng(11)
    a, b = rng.binomial(5000, 0.9, 2000), rng.binomial(5000, 0.5, 2000)
    p = np.array([tally(({"v1": int(x), "v2": 5000 - int(x)}, {"v1": 90, "v2": 10}),
                        ({"v1": int(y), "v2": 5000 - int(y)}, {"v1": 50, "v2": 50})
                        ).test().p_value for x, y in zip(a, b, strict=True)])
    assert abs((p < 0.05).mean() - 0.05) < 0.015
    assert abs((p < 0.2).mean() - 0.2) < 0.03


def test_assignments_to_an_arm_at_weight_0_are_a_mismatch() -> None:
    t = tally(({"v1": 1000, "v3": 2}, {"v1": 100, "v3": 0}))
    r = t.test()
    assert r.flagged and r.p_value == 0.0 and r.zero_weight_arms == ("v3",)
    assert "v3 while at weight 0" in r.describe()
    json.dumps(r.to_dict(), allow_nan=False)


def test_tally_round_trips_and_folds_old_periods() -> None:
    t = tally(({"v1": 9000, "v2": 1000}, {"v1": 90, "v2": 10}),
              ({"v1": 5100, "v2": 4900}, {"v1": 50, "v2": 50}))
    back = SplitTally.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.test() == t.test()
    many = SplitTally()
    for k in range(MAX_PERIODS + 10):
        w = 10 + k % 80 + k / 1000
        many.add({"v1": 500, "v2": 500}, {"v1": 100 - w, "v2": w})
    assert len(many.periods) == MAX_PERIODS and many.closed_log_bf != 0.0
    assert many.test().flagged  # 50/50 observed where 10 to 90 % was expected


def sequential_false_alarms(seed: int = 12, runs: int = RUNS) -> tuple[float, float, float]:
    """50/50, checked every 100 requests up to 20,000: sequential, chi-square monitored,
    chi-square once at the end (each at p < 0.001)."""
    rng = np.random.default_rng(seed)
    x = rng.binomial(EVERY, 0.5, size=(runs, HORIZON // EVERY)).cumsum(axis=1)
    n = EVERY * np.arange(1, HORIZON // EVERY + 1)
    a = CONCENTRATION * 0.5
    log_bf = (special.gammaln(CONCENTRATION) - special.gammaln(CONCENTRATION + n)
              + special.gammaln(a + x) + special.gammaln(a + n - x) - 2 * special.gammaln(a)
              + n * math.log(2))
    chi2 = (2 * x - n) ** 2 / n
    p_chi = stats.chi2.sf(chi2, 1)
    return (float((log_bf >= math.log(1 / SRM_ALPHA)).any(axis=1).mean()),
            float((p_chi < SRM_ALPHA).any(axis=1).mean()), float((p_chi[:, -1] < SRM_ALPHA).mean()))


def test_false_alarms_on_correct_splits_stay_at_0_1_percent() -> None:
    # The vectorised Bayes factor above is the module's (checked here on a few points).
    for x, n in ((10_400, 20_000), (55, 100), (9_990, 20_000)):
        ref = dirichlet_multinomial_log_bf([x, n - x], [0.5, 0.5], CONCENTRATION)
        a = CONCENTRATION * 0.5
        got = (special.gammaln(CONCENTRATION) - special.gammaln(CONCENTRATION + n)
               + special.gammaln(a + x) + special.gammaln(a + n - x) - 2 * special.gammaln(a)
               + n * math.log(2))
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)
    seq, monitored, once = sequential_false_alarms()
    error = 3 * math.sqrt(SRM_ALPHA / RUNS)  # three standard errors at 0.1 %
    assert seq <= SRM_ALPHA + error  # measured 0.0003 with 100 looks each
    assert once <= SRM_ALPHA + error  # measured 0.0010: one look
    assert monitored > 5 * SRM_ALPHA  # measured 0.0149: why the report flags on the sequential


def test_monitor_counts_only_intervals_served_under_one_set_of_weights() -> None:
    m = SplitMonitor()
    w90, w50 = {"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}
    m.observe("r1", {"v1": 100, "v2": 10}, w90)  # first report: the past is unknown
    m.observe("r1", {"v1": 190, "v2": 20}, w90)  # served partly before the first reply
    assert m.tally.observed == {} and m.excluded == 100
    m.observe("r1", {"v1": 1090, "v2": 120}, w90)  # clean: 900 / 100 at 90/10
    assert m.tally.observed == {"v1": 900, "v2": 100}
    m.observe("r1", {"v1": 1990, "v2": 220}, w50)  # still 90/10; the reply says 50/50
    m.observe("r1", {"v1": 2100, "v2": 300}, w50)  # switched during this interval: excluded
    m.observe("r1", {"v1": 2600, "v2": 800}, w50)  # clean at 50/50
    r = m.test()
    assert r.observed == {"v1": 2300, "v2": 700}
    assert r.expected == pytest.approx({"v1": 0.9 * 1000 + 0.9 * 1000 + 0.5 * 1000,
                                        "v2": 0.1 * 2000 + 0.5 * 1000})
    assert not r.flagged and m.excluded == 100 + 190
    # A second replica adds up; a reset counter (restart under the same id) starts over.
    for counts in ({"v1": 10, "v2": 10}, {"v1": 20, "v2": 20}, {"v1": 520, "v2": 520}):
        m.observe("r2", counts, w50)
    assert m.test().observed == {"v1": 2800, "v2": 1200}
    m.observe("r2", {"v1": 5, "v2": 5}, w50)
    m.observe("r2", {"v1": 9, "v2": 9}, w50)
    assert m.test().observed == {"v1": 2800, "v2": 1200}


def test_monitor_without_weights_in_force_counts_nothing() -> None:
    m = SplitMonitor()
    for k in range(1, 6):
        m.observe("r1", {"v1": 100 * k, "v2": 900 * k}, None)  # the bandit: no weights
    assert m.test().n == 0
    m.observe("r1", {"v1": 600, "v2": 5400}, {"v1": 50, "v2": 50})
    m.observe("r1", {"v1": 700, "v2": 5500}, {"v1": 50, "v2": 50})
    assert m.test().n == 0  # the interval after the policy changed is not known to be clean


def test_monitor_flags_a_biased_split() -> None:
    rng = np.random.default_rng(13)
    m = SplitMonitor()
    cum = {"v1": 0, "v2": 0}
    for _ in range(40):  # 40 syncs of 500 requests at 52/48 under 50/50 weights
        x = int(rng.binomial(500, 0.52))
        cum = {"v1": cum["v1"] + x, "v2": cum["v2"] + 500 - x}
        m.observe("r1", cum, {"v1": 50, "v2": 50})
    r = m.test()
    assert r.n == 19_000 and r.flagged, r.describe()


def test_gauges_name_the_controller_metrics() -> None:
    bad = tally(({"v1": 10_400, "v2": 9_600}, {"v1": 50, "v2": 50})).test()
    assert bad.gauges() == {"abserve_srm_p_value": bad.seq_p_value, "abserve_srm_mismatch": 1.0}
    assert set(bad.gauges()) == set(CONTROLLER_METRICS)
    for spec in CONTROLLER_METRICS.values():
        assert spec.kind == "gauge" and exported_names(spec) == (f"ray_{spec.name}",)



def test_srm_gauges_are_set_after_a_sync_that_counted() -> None:
    """The controller's part without Ray: one gauge per CONTROLLER_METRICS spec from its
    factory, set with the experiment's tag from the monitor's test, only when it changed."""
    class Gauge:
        def __init__(self, spec: MetricSpec) -> None:
            self.spec = spec
            self.values: list[tuple[float, dict[str, str]]] = []

        def set(self, value: float, tags: dict[str, str]) -> None:
            assert set(tags) == set(self.spec.tag_keys)
            self.values.append((value, tags))

    gauges = SrmGauges(Gauge)
    made = gauges.gauges
    assert set(made) == set(CONTROLLER_METRICS)
    m = SplitMonitor()
    w = {"v1": 50, "v2": 50}
    m.observe("r1", {"v1": 0, "v2": 0}, w)
    assert gauges.update(m, "exp") is None  # no counts: nothing set (no p = 1 before a check)
    assert all(not g.values for g in made.values())
    for cum in ({"v1": 10, "v2": 10}, {"v1": 20, "v2": 20}, {"v1": 5_220, "v2": 4_820}):
        m.observe("r1", cum, w)
    test = gauges.update(m, "exp")
    assert test is not None and test.n == 10_020  # 20 + 10,000: the first interval is unknown
    tags = {"experiment": "exp"}
    assert made["abserve_srm_p_value"].values == [(test.seq_p_value, tags)]
    assert made["abserve_srm_mismatch"].values == [(1.0 if test.flagged else 0.0, tags)]
    assert gauges.update(m, "exp") is None  # the same tally: not recomputed, not set again
    m.observe("r1", {"v1": 5_240, "v2": 4_840}, w)
    assert gauges.update(m, "exp") is not None and len(made["abserve_srm_p_value"].values) == 2
    assert gauges.update(m, "renamed") is not None  # a new experiment name: its own series
    assert made["abserve_srm_mismatch"].values[-1][1] == {"experiment": "renamed"}

if __name__ == "__main__":
    seq, monitored, once = sequential_false_alarms()
    print(f"SRM false alarms, {RUNS:,} correct 50/50 experiments checked every {EVERY} "
          f"requests up to {HORIZON:,} (p < {SRM_ALPHA}):")
    print(f"  sequential (Lindon-Malek, concentration {CONCENTRATION:g}): {seq:.4f}")
    print(f"  chi-square checked at every look: {monitored:.4f}; read once at the end: "
          f"{once:.4f}")
    t = tally(({"v1": 10_400, "v2": 9_600}, {"v1": 50, "v2": 50})).test()
    print(f"  52/48 at n = 20,000: chi-square p = {t.p_value:.2g}, sequential p = "
          f"{t.seq_p_value:.2g}")
