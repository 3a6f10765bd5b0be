"""Statistics that stay valid when people look at them as often as they like. No Ray.

The live report and the canary gates are recomputed every few seconds; a
fixed-horizon test checked that often calls an A/A experiment significant far
more often than alpha (42 % instead of 5 % when checked after every 100 labels
up to 20,000, tests/unit/test_stats.py). What is here instead:

- ``msprt_difference``: the mixture sequential probability ratio test (mSPRT)
  for a difference of two proportions, with its always-valid p-value and
  confidence sequence (Johari, Pekelis, Walsh, "Always valid inference:
  bringing sequential analysis to A/B testing", 2017, arXiv:1512.04922;
  Johari, Koomen, Pekelis, Walsh, "Peeking at A/B tests", KDD 2017; the test
  behind Optimizely's Stats Engine). Normal approximation of the difference
  with a plug-in variance, mixed over N(0, tau^2) alternatives.
- ``holm``: Holm's step-down adjustment across candidates (Holm 1979). On
  always-valid p-values it keeps the family-wise error at alpha uniformly over
  time: every local test of the closed procedure is Bonferroni over
  time-uniform p-values.
- ``chi2_sf`` and ``dirichlet_multinomial_log_bf``: the two sample-ratio tests
  (router/controlplane/split.py). Pearson's chi-square, and the anytime-valid
  Dirichlet-multinomial Bayes factor of Lindon and Malek, "Anytime-valid
  inference for multinomial count data", NeurIPS 2022 (arXiv:2011.03567).
- ``label_shift``: two predicted-label distributions compared, total variation
  distance and Pearson's chi-square test of homogeneity (the canary's
  label_shift gate and the report's no-label quality).
- ``mann_whitney_binned``: the Mann-Whitney U test (tie-corrected normal
  approximation, as scipy's ``method="asymptotic"``) on two histograms over
  the same ordered bins, plus the Hodges-Lehmann shift in bins: latency
  compared as a distribution, as Kayenta's canary judge does.

Plain ``math`` (and numpy for the histograms); tests/unit/test_stats.py checks
every formula with an equivalent against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "DEFAULT_TAU",
    "MIN_LABELS",
    "MannWhitney",
    "SequentialResult",
    "chi2_sf",
    "dirichlet_multinomial_log_bf",
    "holm",
    "label_shift",
    "mann_whitney_binned",
    "msprt_difference",
    "msprt_p_values",
    "noninferiority",
    "wilson_interval",
    "normal_sf",
]

# The mixture's scale: the sequential test is most powerful for differences near tau.
# Two points suits model accuracies (the report's minimum detectable effect is 0.02).
DEFAULT_TAU = 0.02
# The normal approximation wants some labels on each side before it says anything.
MIN_LABELS = 30
_MAX_LOG = 700.0  # exp() of more overflows a float


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class SequentialResult:
    """mSPRT of ``p_candidate - p_baseline == 0``.

    ``p_value`` and ``ci`` are always valid: the chance that the p-value
    ever falls below alpha under the null, or that the interval ever misses
    the true difference, at any of as many looks as one likes, is at most
    alpha. ``ci`` is at level ``1 - alpha``.
    """

    delta: float  # observed difference of proportions, candidate minus baseline
    p_value: float
    ci: tuple[float, float]
    alpha: float
    tau: float
    variance: float  # the plug-in variance of delta

    def ci_at(self, alpha: float) -> tuple[float, float]:
        """The confidence sequence at another level (e.g. alpha / m across m candidates)."""
        return _confidence_sequence(self.delta, self.variance, self.tau, alpha)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _confidence_sequence(
    delta: float, v: float, tau: float, alpha: float,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> tuple[float, float]:
    """The mSPRT's interval, clipped to ``bounds``: [-1, 1] for a difference of
    proportions; a difference of means (kind_stats.py) passes its own."""
    _check_alpha(alpha)
    t2 = tau * tau
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2.0 * math.log(alpha)))
    return max(bounds[0], delta - half), min(bounds[1], delta + half)


def msprt_difference(
    s_c: int, n_c: int, s_b: int, n_b: int, *, alpha: float = 0.05, tau: float = DEFAULT_TAU
) -> SequentialResult:
    """Always-valid test and interval for ``s_c/n_c - s_b/n_b`` (candidate minus baseline).

    With ``d`` the observed difference and ``V`` its variance, the mixture
    likelihood ratio of H0 ``theta = theta0`` against ``theta ~ N(theta0, tau^2)``
    is ``sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))``;
    the p-value is ``min(1, 1 / ratio(0))`` and the interval is every
    ``theta0`` whose ratio is below ``1 / alpha``. ``V`` uses ``(s + 1/2) / (n + 1)``
    so that 0 or n successes do not give a zero variance.

    The values are those of this look alone (no running minimum or
    intersection is kept), which is what makes them recomputable from the
    cumulative counts; the guarantee holds for them all the same.
    """
    for s, n, name in ((s_c, n_c, "candidate"), (s_b, n_b, "baseline")):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"{name}: need n > 0 and 0 <= s <= n, got s={s}, n={n}")
    _check_alpha(alpha)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    delta = s_c / n_c - s_b / n_b
    pc, pb = (s_c + 0.5) / (n_c + 1), (s_b + 0.5) / (n_b + 1)
    v = pc * (1 - pc) / n_c + pb * (1 - pb) / n_b
    t2 = tau * tau
    log_ratio = 0.5 * math.log(v / (v + t2)) + t2 * delta * delta / (2 * v * (v + t2))
    p = 1.0 if log_ratio <= 0 else math.exp(-min(log_ratio, _MAX_LOG))
    return SequentialResult(delta, p, _confidence_sequence(delta, v, tau, alpha), alpha, tau, v)


def msprt_p_values(
    s_c: np.ndarray, n_c: np.ndarray, s_b: np.ndarray, n_b: np.ndarray, tau: float = DEFAULT_TAU
) -> np.ndarray:
    """``msprt_difference(...).p_value`` over arrays of counts at once (for simulations)."""
    s_c, n_c, s_b, n_b = (np.asarray(a, dtype=float) for a in (s_c, n_c, s_b, n_b))
    delta = s_c / n_c - s_b / n_b
    pc, pb = (s_c + 0.5) / (n_c + 1), (s_b + 0.5) / (n_b + 1)
    v = pc * (1 - pc) / n_c + pb * (1 - pb) / n_b
    t2 = tau * tau
    log_ratio = 0.5 * np.log(v / (v + t2)) + t2 * delta * delta / (2 * v * (v + t2))
    return np.exp(-np.clip(log_ratio, 0.0, _MAX_LOG))


def noninferiority(result: SequentialResult, margin: float) -> str:
    """``pass``: the interval lies above ``-margin`` (not worse by the margin, shown);
    ``fail``: it lies below ``-margin`` (worse by more than the margin, shown);
    ``inconclusive`` otherwise. Either claim is wrong with probability at most alpha."""
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lo, hi = result.ci
    if lo > -margin:
        return "pass"
    if hi < -margin:
        return "fail"
    return "inconclusive"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order.

    Reject hypothesis i at family-wise level alpha when its adjusted value is
    below alpha. With one p-value it is returned unchanged.
    """
    m = len(p_values)
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], got {p}")
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------- chi-square


def _gammainc_upper(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above)."""
    if x <= 0.0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if log_front < -_MAX_LOG:
        return 0.0 if x > a else 1.0
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Lentz's continued fraction for Q (Numerical Recipes, gcf).
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for X chi-square with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(x):
        return 0.0
    return _gammainc_upper(df / 2.0, x / 2.0)


def label_shift(a: Mapping[int, int], b: Mapping[int, int]) -> tuple[float, float] | None:
    """(total variation distance, chi-square homogeneity p) of two label count maps.

    None when either is empty. Classes neither predicted are left out; the
    test has (classes - 1) degrees of freedom. Pearson's statistic on the
    2 x classes table, as scipy's ``chi2_contingency(correction=False)``.
    """
    classes = sorted(k for k in a.keys() | b.keys() if a.get(k, 0) + b.get(k, 0) > 0)
    na, nb = sum(a.get(k, 0) for k in classes), sum(b.get(k, 0) for k in classes)
    if not na or not nb:
        return None
    tvd = 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in classes)
    if len(classes) < 2:
        return tvd, 1.0
    total = na + nb
    stat = 0.0
    for k in classes:
        col = a.get(k, 0) + b.get(k, 0)
        for n, obs in ((na, a.get(k, 0)), (nb, b.get(k, 0))):
            expected = n * col / total
            stat += (obs - expected) ** 2 / expected
    return tvd, chi2_sf(stat, len(classes) - 1)

def dirichlet_multinomial_log_bf(
    counts: Sequence[float], probs: Sequence[float], concentration: float
) -> float:
    """Log Bayes factor of multinomial counts: Dirichlet(concentration * probs) against ``probs``.

    Lindon and Malek's test martingale: under the null (the counts are
    multinomial with ``probs``) its exponential stays below ``1 / alpha`` at
    every look with probability at least ``1 - alpha`` (Ville's inequality),
    so ``min(1, exp(-log_bf))`` is an anytime-valid p-value. Every ``probs``
    entry must be > 0 (arms at weight 0 are the caller's to handle).
    """
    if len(counts) != len(probs):
        raise ValueError("counts and probs must have the same length")
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    total = sum(probs)
    if any(not p > 0 for p in probs) or not math.isclose(total, 1.0, rel_tol=1e-9):
        raise ValueError(f"probs must be > 0 and sum to 1, got {list(probs)}")
    n = sum(counts)
    out = math.lgamma(concentration) - math.lgamma(concentration + n)
    for k, p in zip(counts, probs, strict=True):
        a = concentration * p
        out += math.lgamma(a + k) - math.lgamma(a) - k * math.log(p)
    return out


# ---------------------------------------------------------------- Mann-Whitney on bins


@dataclass(frozen=True)
class MannWhitney:
    """Mann-Whitney U of sample x against sample y, both given as counts per ordered bin.

    ``u`` counts the pairs with x above y (ties count one half);
    ``prob_greater = u / (n_x n_y)`` is P(X > Y) + P(X = Y) / 2 (0.5: no shift).
    ``p_greater`` is the one-sided p-value for "x tends to be larger".
    ``shift_bins`` is the Hodges-Lehmann estimate of the shift of x against y,
    in bins: the median of all pairwise bin differences.
    """

    n_x: int
    n_y: int
    u: float
    z: float
    p_two_sided: float
    p_greater: float
    p_less: float
    prob_greater: float
    shift_bins: float


def _hodges_lehmann_bins(x: np.ndarray, y: np.ndarray) -> float:
    pairs = np.convolve(x, y[::-1])  # index k holds the pairs with (i - j) = k - (len(y) - 1)
    cum = np.cumsum(pairs)
    half = cum[-1] / 2.0
    lo = int(np.searchsorted(cum, half, side="left"))
    hi = int(np.searchsorted(cum, half, side="right"))
    # An even split between two differences (cum exactly half) takes their midpoint.
    mid = (lo + min(hi, len(cum) - 1)) / 2.0 if cum[lo] == half else float(lo)
    return mid - (len(y) - 1)


def mann_whitney_binned(x_counts: Sequence[int], y_counts: Sequence[int]) -> MannWhitney:
    """The test on binned data: every value in a bin ties with the others in that bin.

    Equals ``scipy.stats.mannwhitneyu(x, y, method="asymptotic")`` (with its
    continuity correction) on the samples the bins stand for.
    """
    x = np.asarray(x_counts, dtype=float)
    y = np.asarray(y_counts, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x_counts and y_counts must be 1-d over the same bins")
    if (x < 0).any() or (y < 0).any():
        raise ValueError("counts must be >= 0")
    n1, n2 = float(x.sum()), float(y.sum())
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    below_y = np.cumsum(y) - y
    u1 = float((x * (below_y + y / 2.0)).sum())
    u2 = n1 * n2 - u1
    n = n1 + n2
    t = x + y
    tie = float((t**3 - t).sum())
    var = n1 * n2 / 12.0 * ((n + 1.0) - tie / (n * (n - 1.0))) if n > 1 else 0.0
    mu = n1 * n2 / 2.0
    if var <= 0:
        z, p_two, p_gt, p_lt = 0.0, 1.0, 1.0, 1.0
    else:
        sd = math.sqrt(var)
        z = (u1 - mu) / sd
        p_two = min(1.0, 2.0 * normal_sf((max(u1, u2) - mu - 0.5) / sd))
        p_gt = min(1.0, normal_sf((u1 - mu - 0.5) / sd))
        p_lt = min(1.0, normal_sf((u2 - mu - 0.5) / sd))
    return MannWhitney(
        int(n1), int(n2), u1, z, p_two, p_gt, p_lt, u1 / (n1 * n2), _hodges_lehmann_bins(x, y)
    )


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion.

    Chosen over the normal (Wald) interval because it keeps its coverage
    near 0 and 1 and with small ``n``, where accuracies of good models live.
    ``n == 0`` gives the uninformative ``(0, 1)``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
