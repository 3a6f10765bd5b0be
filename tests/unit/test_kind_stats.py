"""The binary and regression kinds' statistics: formulas against scipy, statsmodels and
scikit-learn, guarantees by simulation (vectorised and seeded, well under a second each).

``python -m tests.unit.test_kind_stats`` prints the simulated figures the asserts bound.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

from router.controlplane.analysis import wilson_interval
from router.controlplane.kind_stats import (
    TAU_FLOOR,
    TAU_FRACTION,
    AgreementMoments,
    ErrorMoments,
    MeanDifferenceResult,
    ScoreHistogram,
    auc,
    auc_tie_bound,
    default_tau,
    mae_comparison,
    mae_interval,
    mae_noninferiority,
    mse_interval,
    msprt_mean_difference,
    rmse_interval,
    t_quantile,
)
from router.controlplane.stats import SequentialResult, _confidence_sequence

ALPHA = 0.05
RUNS, EVERY, LOOKS = 1000, 20, 50  # sequential: looked at after every 20 answers up to 1,000
N = EVERY * np.arange(1, LOOKS + 1)


def _moments(predicted: np.ndarray, actual: np.ndarray) -> ErrorMoments:
    m = ErrorMoments()
    m.add_batch(predicted.reshape(len(predicted), -1), actual.reshape(len(actual), -1))
    return m


# ---------------------------------------------------------------- ErrorMoments


@pytest.mark.parametrize("width", [1, 5])
def test_error_moments_equal_scikit_learn(width: int) -> None:
    rng = np.random.default_rng(10)
    y = rng.normal(3.0, 2.0, (400, width))
    p = y + rng.standard_t(4, (400, width)) * 0.7
    one_by_one = ErrorMoments()
    for row_p, row_y in zip(p, y, strict=True):
        one_by_one.add(list(row_p), list(row_y))
    batch = _moments(p, y)
    for m in (one_by_one, batch):
        assert m.n == 400 and m.width == width
        assert m.mae == pytest.approx(metrics.mean_absolute_error(y, p), rel=1e-12)
        assert m.rmse == pytest.approx(math.sqrt(metrics.mean_squared_error(y, p)), rel=1e-12)
        assert m.mse == pytest.approx(metrics.mean_squared_error(y, p), rel=1e-12)
        # pooled over outputs: the R² of the flattened arrays (one output: the usual one)
        assert m.r2 == pytest.approx(metrics.r2_score(y.ravel(), p.ravel()), rel=1e-10)
        a = np.abs(p - y).mean(axis=1)
        assert m.abs_variance == pytest.approx(a.var(ddof=1), rel=1e-9)
        assert m.sq_variance == pytest.approx(((p - y) ** 2).mean(axis=1).var(ddof=1), rel=1e-9)
    if width == 1:
        assert batch.r2 == pytest.approx(metrics.r2_score(y, p), rel=1e-10)
    for key, value in batch.to_dict().items():
        assert one_by_one.to_dict()[key] == pytest.approx(value, rel=1e-12)


def test_error_moments_merge_and_round_trip_through_json() -> None:
    rng = np.random.default_rng(11)
    y = rng.normal(size=(300, 3))
    p = y + rng.normal(size=(300, 3))
    whole = _moments(p, y)
    parts = [_moments(p[i:i + 100], y[i:i + 100]) for i in (0, 100, 200)]
    merged = parts[0].merged(parts[1]).merged(parts[2])
    assert merged.n == 300 and merged.width == 3
    for key, value in whole.to_dict().items():
        assert merged.to_dict()[key] == pytest.approx(value, rel=1e-12)
    assert parts[0].to_dict() == _moments(p[:100], y[:100]).to_dict()  # merged() changed nothing
    data = json.loads(json.dumps(whole.to_dict()))
    assert ErrorMoments.from_dict(data) == whole  # exact: JSON keeps every float
    assert set(data) == {"n", "width", "sum_abs", "sum_abs2", "sum_sq", "sum_sq2", "sum_y",
                         "sum_y2"}
    assert ErrorMoments.from_dict({}) == ErrorMoments()
    assert ErrorMoments().merged(whole) == whole
    for bad in ({"n": -1}, {"n": 2.5, "width": 1}, {"n": 3}, {"width": 2},
                {"n": 1, "width": 1, "sum_abs": -1.0}, {"n": 1, "width": 1, "sum_sq": math.inf},
                {"n": True, "width": 1}, {"n": 1, "width": 1, "sum_y": "3"}):
        with pytest.raises(ValueError):
            ErrorMoments.from_dict(bad)
    with pytest.raises(ValueError):
        whole.merged(_moments(p[:, :2], y[:, :2]))  # 3 outputs against 2


def test_error_moments_reject_bad_observations() -> None:
    m = ErrorMoments()
    for predicted, actual in (([1.0], [1.0, 2.0]), ([], []), ([math.nan], [1.0]),
                              ([1.0], [math.inf]), ([[1.0]], [[1.0]])):
        with pytest.raises(ValueError):
            m.add(predicted, actual)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.add_batch(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError):
        m.add_batch(np.zeros(3), np.zeros(3))  # a batch is (n, width)
    assert m == ErrorMoments()  # nothing was counted
    m.add_batch(np.zeros((0, 2)), np.zeros((0, 2)))  # an empty batch counts nothing
    assert m == ErrorMoments()
    m.add([1.0, 2.0], [1.5, 2.0])
    with pytest.raises(ValueError):
        m.add([1.0], [1.0])  # width is fixed by the first observation
    assert m.mae == pytest.approx(0.25) and m.rmse == pytest.approx(math.sqrt(0.125))


def test_undefined_values_are_none() -> None:
    empty = ErrorMoments()
    assert empty.mae is None and empty.rmse is None and empty.r2 is None
    one = ErrorMoments()
    one.add([2.0], [1.0])
    assert one.mae == 1.0 and one.r2 is None and one.abs_variance is None
    assert mae_interval(one) is None and rmse_interval(one) is None and mse_interval(one) is None
    flat = _moments(np.array([1.0, 2.0, 3.0]), np.full(3, 0.1))  # every true value the same
    assert flat.r2 is None


# ---------------------------------------------------------------- t quantile, intervals


@pytest.mark.parametrize("df", [0.5, 1, 1.5, 2, 3, 4, 7, 29, 30, 31, 120, 999, 1000, 1e5, 1e7])
def test_t_quantile_matches_scipy(df: float) -> None:
    for q in (1e-10, 1e-6, 0.001, 0.025, 0.05, 0.1, 0.3, 0.45, 0.55, 0.8, 0.9, 0.95, 0.975,
              0.995, 1 - 1e-6):
        assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-10)
    assert t_quantile(0.5, df) == 0.0
    for bad_q, bad_df in ((0.0, df), (1.0, df), (0.5, 0.0), (0.5, -1.0)):
        with pytest.raises(ValueError):
            t_quantile(bad_q, bad_df)


@pytest.mark.parametrize(("n", "width"), [(5, 1), (31, 1), (500, 1), (60, 4)])
def test_intervals_equal_statsmodels_tconfint_mean(n: int, width: int) -> None:
    rng = np.random.default_rng(n + width)
    y = rng.normal(10.0, 3.0, (n, width))
    p = y + 2.0 + rng.normal(size=(n, width))  # biased: the MSE's lower end stays above 0
    m = _moments(p, y)
    a, s = np.abs(p - y).mean(axis=1), ((p - y) ** 2).mean(axis=1)
    for confidence in (0.8, 0.95, 0.99):
        ref_a = DescrStatsW(a).tconfint_mean(alpha=1 - confidence)
        ref_s = DescrStatsW(s).tconfint_mean(alpha=1 - confidence)
        assert mae_interval(m, confidence) == pytest.approx(ref_a, rel=1e-10)
        assert mse_interval(m, confidence) == pytest.approx(ref_s, rel=1e-10)
        assert rmse_interval(m, confidence) == pytest.approx(np.sqrt(ref_s), rel=1e-10)
    with pytest.raises(ValueError):
        mae_interval(m, 1.0)


def test_interval_ends_are_clipped_at_zero() -> None:
    m = _moments(np.array([0.0, 0.0, 0.0, 5.0]), np.zeros(4))  # mean 1.25, sd 2.5
    lo, hi = mae_interval(m)  # type: ignore[misc]
    assert lo == 0.0 and hi == pytest.approx(1.25 + stats.t.ppf(0.975, 3) * 2.5 / 2)
    lo, hi = rmse_interval(m)  # type: ignore[misc]
    assert lo == 0.0 and hi > m.rmse  # type: ignore[operator]


def interval_coverage(seed: int = 12, runs: int = 2000) -> tuple[float, float]:
    """Share of runs whose 95 % interval holds the true value: MAE at n = 50, RMSE at n = 200,
    normal errors of sd 2 (true MAE 2 sqrt(2 / pi), true RMSE 2)."""
    rng = np.random.default_rng(seed)
    hits = [0, 0]
    for _ in range(runs):
        e = rng.normal(0.0, 2.0, 200)
        lo, hi = mae_interval(_moments(e[:50], np.zeros(50)))  # type: ignore[misc]
        hits[0] += lo <= 2.0 * math.sqrt(2 / math.pi) <= hi
        lo, hi = rmse_interval(_moments(e, np.zeros(200)))  # type: ignore[misc]
        hits[1] += lo <= 2.0 <= hi
    return hits[0] / runs, hits[1] / runs


def test_intervals_cover_in_simulation() -> None:
    mae_cover, rmse_cover = interval_coverage()
    assert abs(mae_cover - 0.95) < 0.015  # measured 0.950 (seed 12)
    assert abs(rmse_cover - 0.95) < 0.02  # measured 0.949; 0.89 at n = 30 (skewed squares)


# ---------------------------------------------------------------- mSPRT for means


def _p_values_and_halves(
    sa_c: np.ndarray, sa2_c: np.ndarray, sa_b: np.ndarray, sa2_b: np.ndarray, n: np.ndarray,
    tau: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mae_comparison``'s (p-value, delta, interval half-width) from sums, over arrays."""
    m_c, m_b = sa_c / n, sa_b / n
    v = (np.maximum(0.0, (sa2_c - sa_c**2 / n) / (n - 1))
         + np.maximum(0.0, (sa2_b - sa_b**2 / n) / (n - 1))) / n
    t = np.maximum(TAU_FRACTION * m_b, TAU_FLOOR) if tau is None else np.full_like(v, tau)
    t2 = t * t
    d = m_c - m_b
    log_ratio = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) - 2 * math.log(ALPHA)))
    return np.exp(-np.clip(log_ratio, 0.0, 700.0)), d, half


def _abs_errors(rng: np.random.Generator, dist: str, scale: float, runs: int) -> np.ndarray:
    size = (runs, LOOKS, EVERY)
    e = rng.standard_normal(size) if dist == "normal" else rng.standard_t(3, size)
    return np.abs(e) * scale


def sequential(
    seed: int, dist: str = "normal", worse: float = 1.0, tau: float | None = None,
    runs: int = RUNS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Candidate errors ``worse`` times the baseline's, looked at after every EVERY answers."""
    rng = np.random.default_rng(seed)
    sums = []
    for a in (_abs_errors(rng, dist, worse, runs), _abs_errors(rng, dist, 1.0, runs)):
        sums += [a.sum(axis=-1).cumsum(axis=1), (a * a).sum(axis=-1).cumsum(axis=1)]
    sa_c, sa2_c, sa_b, sa2_b = sums
    p, d, half = _p_values_and_halves(sa_c, sa2_c, sa_b, sa2_b, N, tau)
    return p, d, half, tuple(sums)


def test_vectorised_simulation_equals_mae_comparison() -> None:
    p, d, half, (sa_c, sa2_c, sa_b, sa2_b) = sequential(13, worse=1.1, runs=20)
    rng = np.random.default_rng(14)
    for run, look in zip(rng.integers(0, 20, 100), rng.integers(0, LOOKS, 100), strict=True):
        n = int(N[look])
        cand = ErrorMoments(n, float(sa_c[run, look]), float(sa2_c[run, look]), width=1)
        base = ErrorMoments(n, float(sa_b[run, look]), float(sa2_b[run, look]), width=1)
        r = mae_comparison(cand, base, alpha=ALPHA)
        assert r is not None
        assert r.p_value == pytest.approx(p[run, look], rel=1e-9, abs=1e-300)
        assert r.delta == pytest.approx(d[run, look], rel=1e-12)
        assert r.ci == pytest.approx((d[run, look] - half[run, look],
                                      d[run, look] + half[run, look]), rel=1e-9)


def test_interval_and_p_value_are_dual_and_match_the_mixture_ratio() -> None:
    r = msprt_mean_difference(12.0, 30.0, 400, 10.0, 25.0, 500, alpha=0.05, tau=0.5)
    assert isinstance(r, SequentialResult) and isinstance(r, MeanDifferenceResult)
    assert r.delta == pytest.approx(2.0) and r.variance == pytest.approx(30 / 400 + 25 / 500)

    def log_ratio(theta: float) -> float:  # the mixture likelihood ratio, integrated numerically
        sd = math.sqrt(r.variance)
        grid = np.linspace(-10 * r.tau, 10 * r.tau, 20_001)
        prior = stats.norm.pdf(grid, 0.0, r.tau)
        lik = stats.norm.pdf(r.delta, theta + grid, sd) / stats.norm.pdf(r.delta, theta, sd)
        return math.log(np.trapezoid(prior * lik, grid))

    assert r.p_value == pytest.approx(math.exp(-log_ratio(0.0)), rel=1e-6)
    lo, hi = r.ci
    assert hi > 1.0  # not clipped to [-1, 1]: errors have the target's units
    for end in (lo, hi):
        assert log_ratio(end) == pytest.approx(math.log(1 / 0.05), abs=1e-6)
    wider = r.ci_at(0.05 / 3)  # Holm / Bonferroni across candidates: still unclipped
    assert wider[0] < lo and wider[1] > hi > 1.0
    for mean_c in np.linspace(9.0, 11.0, 41):
        res = msprt_mean_difference(float(mean_c), 30.0, 400, 10.0, 25.0, 500, tau=0.5)
        assert (res.p_value < 0.05) is not (res.ci[0] <= 0.0 <= res.ci[1])
    with pytest.raises(ValueError):
        msprt_mean_difference(1.0, 0.0, 10, 1.0, 0.0, 10, tau=0.1)  # no variance at all
    for bad in ({"n_c": 0}, {"var_c": -1.0}, {"tau": 0.0}, {"alpha": 1.0}, {"mean_b": math.nan}):
        args = {"mean_c": 1.0, "var_c": 1.0, "n_c": 10, "mean_b": 1.0, "var_b": 1.0, "n_b": 10,
                "alpha": 0.05, "tau": 0.1, **bad}
        with pytest.raises(ValueError):
            msprt_mean_difference(**args)  # type: ignore[arg-type]


def test_the_proportions_interval_is_still_clipped() -> None:
    """stats.py's ``bounds`` keyword: [-1, 1] unless told otherwise."""
    lo, hi = _confidence_sequence(0.9, 0.05, 0.02, 0.05, bounds=(-math.inf, math.inf))
    assert hi > 1.0 and lo < -1.0
    assert _confidence_sequence(0.9, 0.05, 0.02, 0.05) == (max(-1.0, lo), 1.0)


@pytest.mark.parametrize("dist", ["normal", "t3"])
def test_aa_peeking_keeps_alpha(dist: str) -> None:
    """Equal error distributions, 50 looks: ever significant in at most alpha of the runs,
    with tau read from the baseline at each look (the default) and with tau fixed."""
    for seed, tau in ((15, None), (16, 0.05)):
        p, _, _, _ = sequential(seed, dist, tau=tau)
        assert (p < ALPHA).any(axis=1).mean() <= ALPHA  # measured 0.000-0.009


def detection(seed: int = 17, worse: float = 1.2) -> tuple[float, float, float]:
    """Normal errors, the candidate's 20 % larger: share detected within 500 and 1,000
    answers per arm, and share of runs whose interval held the true difference at every look."""
    p, d, half, _ = sequential(seed, "normal", worse=worse)
    first = np.where((p < ALPHA).any(axis=1), (p < ALPHA).argmax(axis=1), LOOKS)
    true = (worse - 1.0) * math.sqrt(2 / math.pi)
    covered = (np.abs(d - true) <= half).all(axis=1).mean()
    return float((first < 25).mean()), float((first < LOOKS).mean()), float(covered)


def test_a_real_difference_is_detected_and_the_interval_covers() -> None:
    within_500, within_1000, covered = detection()
    assert within_500 >= 0.45  # measured 0.54 (seed 17)
    assert within_1000 >= 0.95  # measured 0.987
    assert covered >= 1 - ALPHA  # measured 0.999: the confidence sequence, at every look


def test_mae_comparison_and_noninferiority() -> None:
    rng = np.random.default_rng(18)
    y = rng.normal(50.0, 10.0, 5000)
    base = _moments(y + rng.normal(0.0, 4.0, 5000), y)
    cand = _moments(y + rng.normal(0.0, 4.0, 5000), y)
    worse = _moments(y + rng.normal(0.0, 8.0, 5000), y)
    r = mae_comparison(cand, base)
    assert r is not None and r.tau == pytest.approx(TAU_FRACTION * base.mae)  # type: ignore[operator]
    margin = 0.1 * base.mae  # type: ignore[operator]
    assert mae_noninferiority(r, margin) == "pass"
    bad = mae_comparison(worse, base, tau=1.0)
    assert bad is not None and bad.tau == 1.0 and bad.p_value < 1e-6
    assert mae_noninferiority(bad, margin) == "fail"
    few = mae_comparison(_moments(y[:40] + 4.0 * rng.standard_normal(40), y[:40]),
                         _moments(y[:40] + 4.0 * rng.standard_normal(40), y[:40]))
    assert few is not None and mae_noninferiority(few, margin) == "inconclusive"
    with pytest.raises(ValueError):
        mae_noninferiority(r, -0.1)
    one = _moments(np.array([1.0]), np.array([0.0]))
    assert mae_comparison(one, base) is None and mae_comparison(base, one) is None
    const = _moments(np.ones(10), np.zeros(10))  # both arms' errors the same constant
    assert mae_comparison(const, const) is None


def test_default_tau_is_a_share_of_the_baseline_mae() -> None:
    m = _moments(np.full(4, 3.0), np.zeros(4))
    assert default_tau(m) == pytest.approx(TAU_FRACTION * 3.0)
    assert default_tau(_moments(np.zeros(4), np.zeros(4))) == TAU_FLOOR  # a perfect baseline
    assert default_tau(ErrorMoments()) == TAU_FLOOR


# ---------------------------------------------------------------- AUC


@pytest.mark.parametrize("bins", [1, 7, 10, 100])
def test_auc_equals_roc_auc_score_at_bin_centres(bins: int) -> None:
    rng = np.random.default_rng(bins)
    labels = rng.integers(0, 2, 600)
    idx = np.clip(np.round(rng.normal(bins / 2 + labels * bins / 6, bins / 4)), 0, bins - 1)
    scores = (idx + 0.5) / bins
    hist = ScoreHistogram(bins)
    hist.add_batch(scores, labels)
    value, (lo, hi) = auc(hist)  # type: ignore[misc]
    assert value == pytest.approx(metrics.roc_auc_score(labels, scores), rel=1e-12)
    assert lo <= value <= hi
    # the Mann-Whitney U on the bins, as scipy counts it
    u = stats.mannwhitneyu(idx[labels == 1], idx[labels == 0]).statistic
    assert value == pytest.approx(u / (hist.n_positive * hist.n_negative), rel=1e-12)


def test_auc_is_within_the_tie_bound_of_the_raw_scores() -> None:
    rng = np.random.default_rng(19)
    for bins in (5, 20, 100):
        labels = rng.integers(0, 2, 2000)
        scores = rng.beta(2 + 2 * labels, 3 - labels)
        hist = ScoreHistogram(bins)
        hist.add_batch(scores, labels)
        raw = metrics.roc_auc_score(labels, scores)
        value = auc(hist)[0]  # type: ignore[index]
        bound = auc_tie_bound(hist)
        assert bound is not None and abs(value - raw) <= bound + 1e-12
        assert bound > 0


def test_hanley_mcneil_is_the_mann_whitney_null_variance_at_one_half() -> None:
    """At A = 1/2, Hanley and McNeil's variance is (n1 + n2 + 1) / (12 n1 n2), the
    untied Mann-Whitney null variance of U / (n1 n2)."""
    hist = ScoreHistogram(10, [3, 5, 0, 2, 0, 0, 0, 0, 0, 0], [0] * 10)
    hist.positives = [6, 10, 0, 4, 0, 0, 0, 0, 0, 0]  # the same distribution, twice as many
    value, (lo, hi) = auc(hist, 0.9)  # type: ignore[misc]
    n1, n2 = 20, 10
    assert value == pytest.approx(0.5)
    se = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    assert hi - value == pytest.approx(stats.norm.ppf(0.95) * se, rel=1e-12)
    assert value - lo == pytest.approx(hi - value, rel=1e-12)


def _binned_target(bins: int, shift: float) -> float:
    """P(bin of a positive > bin of a negative) + P(same bin) / 2 for logit scores
    N(0, 1) (negatives) and N(shift, 1) (positives): what the binned AUC estimates."""
    edges = special.logit(np.linspace(0.0, 1.0, bins + 1))
    neg, pos = np.diff(stats.norm.cdf(edges)), np.diff(stats.norm.cdf(edges - shift))
    return float((pos * (np.cumsum(neg) - neg + neg / 2)).sum())


def auc_coverage(seed: int = 20, runs: int = 1000, n_pos: int = 100, n_neg: int = 100,
                 shift: float = 1.0) -> float:
    rng = np.random.default_rng(seed)
    target = _binned_target(100, shift)
    hits = 0
    for _ in range(runs):
        hist = ScoreHistogram()
        hist.add_batch(special.expit(rng.normal(0.0, 1.0, n_neg)), np.zeros(n_neg, dtype=int))
        hist.add_batch(special.expit(rng.normal(shift, 1.0, n_pos)), np.ones(n_pos, dtype=int))
        _, (lo, hi) = auc(hist)  # type: ignore[misc]
        hits += lo <= target <= hi
    return hits / runs


def test_auc_interval_covers_in_simulation() -> None:
    assert abs(_binned_target(100, 1.0) - stats.norm.cdf(1 / math.sqrt(2))) < 1e-3
    assert abs(auc_coverage() - 0.95) < 0.02  # measured 0.946 (seed 20), AUC 0.76
    # few positives, high AUC: Hanley-McNeil is conservative there (measured 0.984)
    assert 0.93 < auc_coverage(21, n_pos=30, n_neg=300, shift=2.0) < 0.995


def test_score_histogram_counts_merges_and_round_trips() -> None:
    hist = ScoreHistogram(4)
    for score, label in ((0.0, 0), (0.24, 0), (0.25, 1), (0.99, 1), (1.0, 1), (0.5, True)):
        hist.add(score, label)
    assert hist.negatives == [2, 0, 0, 0] and hist.positives == [0, 1, 1, 2]
    batch = ScoreHistogram(4)
    batch.add_batch([0.0, 0.24, 0.25, 0.99, 1.0, 0.5], [0, 0, 1, 1, 1, 1])
    assert batch == hist
    data = json.loads(json.dumps(hist.to_dict()))
    assert data == {"bins": 4, "negatives": {"0": 2}, "positives": {"1": 1, "2": 1, "3": 2}}
    assert ScoreHistogram.from_dict(data) == hist
    both = hist.merged(batch)
    assert both.positives == [0, 2, 2, 4] and hist.positives == [0, 1, 1, 2]
    assert auc(hist) == (1.0, (1.0, 1.0))  # separated: Hanley-McNeil's se is 0 there
    assert auc(ScoreHistogram()) is None
    only_pos = ScoreHistogram()
    only_pos.add(0.3, 1)
    assert auc(only_pos) is None and auc_tie_bound(only_pos) is None
    for score, label in ((-0.1, 0), (1.1, 1), (math.nan, 0), (0.5, 2)):
        with pytest.raises(ValueError):
            hist.add(score, label)
    with pytest.raises(ValueError):
        hist.add_batch([0.5, math.nan], [0, 1])
    with pytest.raises(ValueError):
        hist.add_batch([0.5], [3])
    with pytest.raises(ValueError):
        hist.merged(ScoreHistogram(5))
    for bad in ({"bins": 0}, {"bins": 4, "negatives": {"4": 1}},
                {"bins": 4, "positives": {"0": -1}}, {"bins": 4, "positives": {"0": 1.5}}):
        with pytest.raises(ValueError):
            ScoreHistogram.from_dict(bad)
    with pytest.raises(ValueError):
        ScoreHistogram(4, [1, 2])


# ---------------------------------------------------------------- agreement


def test_agreement_moments() -> None:
    rng = np.random.default_rng(22)
    base = rng.normal(size=(500, 3))
    cand = base + rng.normal(0.0, 0.1, (500, 3))
    agree = AgreementMoments(0.15)
    agree.add_batch(cand, base)
    one_by_one = AgreementMoments(0.15)
    for c, b in zip(cand, base, strict=True):
        one_by_one.add(list(c), list(b))
    diff = np.abs(cand - base)
    within = int((diff.max(axis=1) <= 0.15).sum())  # every output within the tolerance
    assert agree.within == one_by_one.within == within
    assert agree.mean_abs_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert one_by_one.mean_abs_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert agree.share_within == within / 500
    assert agree.share_within_interval() == wilson_interval(within, 500)
    assert agree.share_within_interval(0.9) == pytest.approx(
        proportion_confint(within, 500, alpha=0.1, method="wilson"), rel=1e-12)
    data = json.loads(json.dumps(agree.to_dict()))
    assert set(data) == {"tolerance", "n", "width", "sum_abs_diff", "within"}
    assert AgreementMoments.from_dict(data) == agree
    merged = agree.merged(one_by_one)
    assert merged.n == 1000 and merged.within == 2 * within
    empty = AgreementMoments(0.0)
    assert empty.share_within is None and empty.mean_abs_diff is None
    assert empty.share_within_interval() == (0.0, 1.0)
    empty.add([1.0], [1.0])
    assert empty.share_within == 1.0  # equal answers are within a tolerance of 0
    with pytest.raises(ValueError):
        agree.merged(AgreementMoments(0.2))
    with pytest.raises(ValueError):
        agree.add([1.0], [1.0])  # 1 output against 3
    for tol in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            AgreementMoments(tol)
    for bad in ({}, {"tolerance": 0.1, "n": 1, "within": 2, "width": 1},
                {"tolerance": 0.1, "n": 2}):
        with pytest.raises(ValueError):
            AgreementMoments.from_dict(bad)


if __name__ == "__main__":
    print("interval coverage (MAE n=50, RMSE n=200):", interval_coverage())
    for dist in ("normal", "t3"):
        for seed, tau in ((15, None), (16, 0.05)):
            rate = (sequential(seed, dist, tau=tau)[0] < ALPHA).any(axis=1).mean()
            print(f"A/A {dist}, tau {tau or 'default'}: ever significant {rate:.4f}")
    print("20 % worse: detected within 500, within 1000, interval always covered:", detection())
    print("AUC coverage (100/100, AUC 0.76):", auc_coverage())
    print("AUC coverage (30/300, AUC 0.92):", auc_coverage(21, n_pos=30, n_neg=300, shift=2.0))
