"""The statistics of the experiment report. Pure Python, no Ray.

The counters they read (``ArmMetrics``, ``LatencyHistogram``) are the data
plane's (router/dataplane/measures.py); this module only judges them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

from router.dataplane.measures import ArmMetrics

__all__ = [
    "build_report",
    "min_sample_size",
    "two_proportion_ztest",
    "wilson_interval",
]

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


def two_proportion_ztest(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """Two-sided pooled z-test of ``s1/n1 == s2/n2``; returns ``(z, p_value)``.

    ``z > 0`` means the first proportion is the larger. When the pooled
    proportion is 0 or 1 the two samples are identical: ``(0.0, 1.0)``.
    """
    for s, n, name in ((s1, n1, "1"), (s2, n2, "2")):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"sample {name}: need n > 0 and 0 <= s <= n, got s={s}, n={n}")
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def min_sample_size(
    p_baseline: float, min_detectable_effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Per-arm sample size for the two-sided two-proportion test to detect the effect.

    The standard formula (pooled variance under H0, unpooled under H1)
    for ``p_baseline`` against ``p_baseline + mde`` (or ``- mde`` when that
    would pass 1).
    """
    if not 0.0 <= p_baseline <= 1.0:
        raise ValueError(f"p_baseline must be in [0, 1], got {p_baseline}")
    if not 0.0 < min_detectable_effect < 1.0:
        raise ValueError(f"min_detectable_effect must be in (0, 1), got {min_detectable_effect}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    p1 = p_baseline
    p2 = p1 + min_detectable_effect
    if p2 > 1.0:
        p2 = p1 - min_detectable_effect
        if p2 < 0.0:
            raise ValueError("min_detectable_effect is larger than p_baseline allows either way")
    z_a = _z(1.0 - alpha)
    z_b = NormalDist().inv_cdf(power)
    p_bar = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / (min_detectable_effect**2))


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _arm_row(m: ArmMetrics, total_requests: int, weight: float | None) -> dict[str, Any]:
    lo, hi = wilson_interval(m.feedback_correct, m.feedback_total)
    return {
        "requests": m.requests,
        "traffic_share": _rate(m.requests, total_requests),
        "weight": weight,
        "errors": m.errors,
        "error_rate": m.error_rate,
        "fallbacks": m.fallbacks,
        "fallback_rate": m.fallback_rate,
        "answered": m.answered,
        "p50_ms": m.latency.quantile(0.5),
        "p99_ms": m.latency.quantile(0.99),
        "accuracy": m.accuracy,
        "accuracy_ci95": [lo, hi] if m.feedback_total else None,
        "feedback_n": m.feedback_total,
    }


def build_report(
    arms: Mapping[str, ArmMetrics],
    baseline: str,
    *,
    weights: Mapping[str, float],
    min_detectable_effect: float = 0.02,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The experiment report as a JSON-ready dict (no NaN: missing data is ``None``).

    Every arm row has the same keys; the comparison fields (``z``,
    ``p_value``, ``significant``, ``accuracy_delta``, ``min_sample_size``,
    ``sample_size_reached``) are ``None`` for the baseline and for a
    candidate while either side lacks feedback. ``z > 0`` means the
    candidate is more accurate than the baseline.
    """
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not among the arms {sorted(arms)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    total = ArmMetrics()
    for m in arms.values():
        total = total.merge(m)
    base = arms[baseline]
    mde_n: int | None = None
    if base.accuracy is not None:
        mde_n = min_sample_size(base.accuracy, min_detectable_effect, alpha)
    rows: dict[str, dict[str, Any]] = {}
    for name, m in arms.items():
        row = _arm_row(m, total.requests, weights.get(name))
        row["baseline"] = name == baseline
        row.update(z=None, p_value=None, significant=None, accuracy_delta=None)
        row.update(min_sample_size=None, sample_size_reached=None)
        if name != baseline:
            row["min_sample_size"] = mde_n
            if mde_n is not None:
                row["sample_size_reached"] = min(m.feedback_total, base.feedback_total) >= mde_n
            if m.feedback_total and base.feedback_total:
                z, p = two_proportion_ztest(
                    m.feedback_correct, m.feedback_total, base.feedback_correct, base.feedback_total
                )
                row.update(z=z, p_value=p, significant=p < alpha)
                row["accuracy_delta"] = (m.accuracy or 0.0) - (base.accuracy or 0.0)
        rows[name] = row
    totals = _arm_row(total, total.requests, sum(weights.get(n, 0.0) for n in arms))
    return {
        "baseline": baseline,
        "alpha": alpha,
        "min_detectable_effect": min_detectable_effect,
        "arms": rows,
        "totals": totals,
    }
