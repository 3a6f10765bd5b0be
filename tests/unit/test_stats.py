"""The report's and the canary's statistics: formulas against scipy, guarantees by simulation.

The simulations are vectorised and seeded (under a second each). What they measure is in
docs/experiments.md (Statistics); ``python -m tests.unit.test_stats`` prints the figures.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special, stats

from router.controlplane.stats import (
    chi2_sf,
    dirichlet_multinomial_log_bf,
    holm,
    label_shift,
    mann_whitney_binned,
    msprt_difference,
    msprt_p_values,
    noninferiority,
)

ALPHA = 0.05
RUNS, EVERY, HORIZON = 2000, 100, 20_000  # A/A: checked after every 100 labels up to 20,000
LOOKS = HORIZON // EVERY
N = EVERY * np.arange(1, LOOKS + 1)  # labels per arm at each look
# +3 points from a 90 % baseline: detected in 80 % of runs within this many labels per arm
POWER_N = 3000


def _cumulative_successes(rng: np.random.Generator, p: float, runs: int = RUNS) -> np.ndarray:
    return rng.binomial(EVERY, p, size=(runs, LOOKS)).cumsum(axis=1)


def _z_p_values(s_c: np.ndarray, s_b: np.ndarray) -> np.ndarray:
    pooled = (s_c + s_b) / (2 * N)
    se = np.sqrt(pooled * (1 - pooled) * 2 / N)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (s_c - s_b) / N / se, 0.0)
    return special.erfc(np.abs(z) / math.sqrt(2))


def aa_rates(seed: int = 1, p: float = 0.9) -> tuple[float, float, float]:
    """Share of A/A runs ever called significant: sequential, z-test peeking, z-test once."""
    rng = np.random.default_rng(seed)
    s_c, s_b = _cumulative_successes(rng, p), _cumulative_successes(rng, p)
    seq = msprt_p_values(s_c, N, s_b, N) < ALPHA
    fixed = _z_p_values(s_c, s_b) < ALPHA
    return float(seq.any(axis=1).mean()), float(fixed.any(axis=1).mean()), float(
        fixed[:, -1].mean())


def power_within(n: int, seed: int = 2, p: float = 0.9, effect: float = 0.03) -> float:
    rng = np.random.default_rng(seed)
    s_b, s_c = _cumulative_successes(rng, p), _cumulative_successes(rng, p + effect)
    detected = (msprt_p_values(s_c, N, s_b, N) < ALPHA) & (n >= N)
    return float(detected.any(axis=1).mean())


def holm_fwer(seed: int = 3, effects: tuple[float, ...] = (0.0, 0.0, 0.0),
              p: float = 0.9) -> tuple[float, float]:
    """Family-wise error over the null candidates, ever, with and without Holm."""
    rng = np.random.default_rng(seed)
    s_b = _cumulative_successes(rng, p)
    pvals = np.stack([msprt_p_values(_cumulative_successes(rng, p + e), N, s_b, N)
                      for e in effects], axis=-1)  # (runs, looks, candidates)
    m = len(effects)
    order = np.sort(pvals, axis=-1)
    adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * order), axis=-1)
    ranks = np.argsort(np.argsort(pvals, axis=-1), axis=-1)
    adjusted = np.take_along_axis(adjusted_sorted, ranks, axis=-1)
    null = np.array([e == 0 for e in effects])
    with_holm = (adjusted[..., null] < ALPHA).any(axis=(1, 2)).mean()
    without = (pvals[..., null] < ALPHA).any(axis=(1, 2)).mean()
    return float(with_holm), float(without)


# ---------------------------------------------------------------- mSPRT


def test_vectorised_p_values_equal_the_scalar_test() -> None:
    rng = np.random.default_rng(0)
    n_c, n_b = rng.integers(30, 50_000, 200), rng.integers(30, 50_000, 200)
    s_c, s_b = rng.binomial(n_c, 0.9), rng.binomial(n_b, 0.91)
    vec = msprt_p_values(s_c, n_c, s_b, n_b)
    for i in range(200):
        r = msprt_difference(int(s_c[i]), int(n_c[i]), int(s_b[i]), int(n_b[i]))
        assert vec[i] == pytest.approx(r.p_value, rel=1e-9, abs=1e-300)


def test_interval_and_p_value_are_dual_and_match_the_mixture_ratio() -> None:
    r = msprt_difference(930, 1000, 900, 1000, alpha=0.05, tau=0.02)
    assert r.delta == pytest.approx(0.03)

    def log_ratio(theta: float) -> float:  # the mixture likelihood ratio, integrated numerically
        sd = math.sqrt(r.variance)
        grid = np.linspace(-10 * r.tau, 10 * r.tau, 20_001)
        prior = stats.norm.pdf(grid, 0.0, r.tau)
        lik = stats.norm.pdf(r.delta, theta + grid, sd) / stats.norm.pdf(r.delta, theta, sd)
        return math.log(np.trapezoid(prior * lik, grid))

    assert r.p_value == pytest.approx(math.exp(-log_ratio(0.0)), rel=1e-6)
    lo, hi = r.ci
    for end in (lo, hi):  # the interval's ends are where the ratio reaches 1 / alpha
        assert log_ratio(end) == pytest.approx(math.log(1 / 0.05), abs=1e-6)
    for s_c in range(850, 1000, 7):
        res = msprt_difference(s_c, 1000, 900, 1000)
        assert (res.p_value < 0.05) is not (res.ci[0] <= 0.0 <= res.ci[1])
    wider = r.ci_at(0.05 / 3)
    assert wider[0] < lo and wider[1] > hi
    assert msprt_difference(1000, 1000, 1000, 1000).p_value == 1.0  # no zero variance
    with pytest.raises(ValueError):
        msprt_difference(5, 0, 1, 10)


def test_aa_peeking_keeps_alpha_and_the_z_test_does_not() -> None:
    seq, fixed_peeking, fixed_once = aa_rates()
    assert seq <= ALPHA  # measured 0.024 (seed 1)
    assert fixed_peeking > 0.3  # measured 0.424: checked 200 times, "significant" in 4 of 10
    assert abs(fixed_once - ALPHA) < 0.015  # read once at the end, the z-test is fine


def test_a_3_point_effect_is_detected_in_80_percent_within_3000_labels() -> None:
    assert power_within(POWER_N) >= 0.8  # measured 0.906 (seed 2); 0.691 within 2,000


def test_holm_keeps_the_family_wise_error_with_three_candidates() -> None:
    with_holm, without = holm_fwer()
    assert with_holm <= ALPHA  # measured 0.021
    assert without > with_holm  # 0.062 uncorrected
    partial, _ = holm_fwer(seed=4, effects=(0.0, 0.0, 0.03))  # one real effect
    assert partial <= ALPHA


def test_noninferiority_outcomes() -> None:
    worse = msprt_difference(280, 1000, 950, 1000)  # the 28 % model against a 95 % one
    assert noninferiority(worse, 0.02) == "fail"
    same = msprt_difference(19_000, 20_000, 19_010, 20_000)
    assert noninferiority(same, 0.02) == "pass"
    few = msprt_difference(190, 200, 191, 200)
    assert noninferiority(few, 0.02) == "inconclusive"
    with pytest.raises(ValueError):
        noninferiority(few, -0.01)


# ---------------------------------------------------------------- Holm


def test_holm_known_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2]) == [0.2]
    assert holm([]) == []
    assert holm([0.5, 0.6, 0.9]) == pytest.approx([1.0, 1.0, 1.0])


def test_holm_matches_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    # multipletests ends with a gc.collect() of its own: 0.2 s a call over the heap a whole
    # suite's run leaves (37 s of CI for these 50 calls); it changes no result.
    import gc
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(5)
    for _ in range(50):
        p = rng.random(4) ** 3
        assert holm(list(p)) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_holm_is_closed_testing_with_bonferroni() -> None:
    """Independent of the step-down formula: reject H_i at level a iff every intersection
    that contains i is rejected by Bonferroni (min p * |S| <= a)."""
    rng = np.random.default_rng(6)
    for m in (2, 3, 4):
        for _ in range(40):
            p = list(rng.random(m) ** 2)
            adjusted = holm(p)
            for a in (0.01, 0.05, 0.1, 0.3):
                closed = {
                    i for i in range(m)
                    if all(min(p[j] for j in s) * len(s) <= a
                           for k in range(1, m + 1)
                           for s in itertools.combinations(range(m), k) if i in s)
                }
                assert {i for i in range(m) if adjusted[i] <= a} == closed


# ---------------------------------------------------------------- chi-square, Dirichlet


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 31])
def test_chi2_sf_matches_scipy(df: int) -> None:
    for x in (0.0, 1e-6, 0.1, 0.5, 1.0, 2.0, df - 0.5, df, df + 1.0, 5.0, 10.83, 20.0, 60.0,
              200.0):
        assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)
    assert chi2_sf(math.inf, df) == 0.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)


def test_label_shift_matches_scipy_contingency() -> None:
    a, b = {0: 120, 1: 60, 2: 20, 5: 0}, {0: 90, 1: 95, 2: 15, 3: 4}
    tvd, p = label_shift(a, b)  # type: ignore[misc]
    classes = [0, 1, 2, 3]  # 5: predicted by neither, left out
    table = np.array([[a.get(k, 0) for k in classes], [b.get(k, 0) for k in classes]])
    assert p == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    shares = table / table.sum(axis=1, keepdims=True)
    assert tvd == pytest.approx(0.5 * np.abs(shares[0] - shares[1]).sum())
    assert label_shift({1: 10}, {1: 30}) == (0.0, 1.0)  # one class: nothing to test
    assert label_shift({}, b) is None and label_shift(a, {7: 0}) is None
    from router.controlplane import canary

    assert canary.label_shift is label_shift  # the gate's, importable where it was

def test_dirichlet_multinomial_bayes_factor_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    for probs in ([0.5, 0.5], [0.9, 0.1], [0.7, 0.2, 0.1], [0.25] * 4):
        for n in (1, 10, 1000, 20_000):
            counts = rng.multinomial(n, probs)
            for c in (10.0, 1000.0):
                ref = (stats.dirichlet_multinomial.logpmf(counts, c * np.array(probs), n)
                       - stats.multinomial.logpmf(counts, n, probs))
                got = dirichlet_multinomial_log_bf(list(counts), probs, c)
                assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError):
        dirichlet_multinomial_log_bf([1, 2], [1.0, 0.0], 10.0)


# ---------------------------------------------------------------- Mann-Whitney


def _expand(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_mann_whitney_binned_matches_scipy(shift: int) -> None:
    rng = np.random.default_rng(8 + shift)
    bins = 40
    x = np.bincount(np.clip(rng.normal(20 + shift, 4, 300).astype(int), 0, bins - 1),
                    minlength=bins)
    y = np.bincount(np.clip(rng.normal(20, 4, 500).astype(int), 0, bins - 1), minlength=bins)
    got = mann_whitney_binned(list(x), list(y))
    xs, ys = _expand(x), _expand(y)
    for alt, p in (("two-sided", got.p_two_sided), ("greater", got.p_greater),
                   ("less", got.p_less)):
        ref = stats.mannwhitneyu(xs, ys, alternative=alt, method="asymptotic")
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300), alt
    ref = stats.mannwhitneyu(xs, ys, method="asymptotic")
    assert got.u == pytest.approx(ref.statistic)
    assert got.prob_greater == pytest.approx(ref.statistic / (len(xs) * len(ys)))
    assert got.shift_bins == pytest.approx(np.median(np.subtract.outer(xs, ys)))
    if shift == 3:
        assert got.p_greater < 1e-6 and got.shift_bins == pytest.approx(3, abs=1)


def test_mann_whitney_edges() -> None:
    same = mann_whitney_binned([0, 5, 0], [0, 7, 0])  # all ties: no information
    assert same.p_two_sided == 1.0 and same.prob_greater == 0.5 and same.shift_bins == 0
    with pytest.raises(ValueError):
        mann_whitney_binned([0, 0], [1, 2])
    with pytest.raises(ValueError):
        mann_whitney_binned([1, 2], [1, 2, 3])


if __name__ == "__main__":  # the figures quoted in docs/experiments.md
    seq, peeking, once = aa_rates()
    print(f"A/A, {RUNS} runs, checked every {EVERY} labels up to {HORIZON:,} per arm (90 %):")
    print(f"  sequential (mSPRT) ever significant: {seq:.3f}")
    print(f"  fixed-horizon z-test ever significant: {peeking:.3f} (read once at the end: "
          f"{once:.3f})")
    seq5, peeking5, _ = aa_rates(p=0.5)
    print(f"  at 50 %: sequential {seq5:.3f}, z-test peeking {peeking5:.3f}")
    for n in (1000, 2000, POWER_N, 5000, HORIZON):
        print(f"  +3 pp from 90 %: detected within {n:,} labels per arm: {power_within(n):.3f}")
    print(f"  +3 pp from 50 %: within 10,000: {power_within(10_000, p=0.5):.3f}")
    h, raw = holm_fwer()
    print(f"  three null candidates: FWER with Holm {h:.3f}, without {raw:.3f}")
    print(f"  two null + one +3 pp: FWER with Holm {holm_fwer(4, (0.0, 0.0, 0.03))[0]:.3f}")
