"""The statistics of the experiment report. Pure Python, no Ray.

The counters they read (``ArmMetrics``, ``LatencyHistogram``) are the data
plane's (router/dataplane/measures.py); this module only judges them. The
sequential tests, Holm's correction and the rank test are in
router/controlplane/stats.py, the sample-ratio check in split.py; ``METHODS``
names each with its reference, and the report carries it.

Quality without labels, per arm: ``disagreement`` (the share of the arm's
compared rows, ``experiment.compare_percent`` of its own answers, that the
baseline labels otherwise) and ``label_distribution``; per candidate the
``label_shift`` of its predicted labels from the baseline's. The verdict
names them when they are material by the canary gates' defaults
(``DISAGREEMENT_MATERIAL``, ``LABEL_SHIFT_MATERIAL``, ``LABEL_SHIFT_ALPHA``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from models.kinds import BINARY, MULTICLASS, REGRESSION
from router.controlplane.kind_stats import (
    ErrorMoments,
    ScoreHistogram,
    auc,
    mae_comparison,
    mae_interval,
    rmse_interval,
)
from router.controlplane.split import SRM_ALPHA, SplitTest
from router.controlplane.stats import (
    MIN_LABELS,
    SequentialResult,
    _z,
    holm,
    label_shift,
    mann_whitney_binned,
    msprt_difference,
    wilson_interval,
)
from router.dataplane.measures import ArmMetrics, LatencyHistogram

__all__ = [
    "DISAGREEMENT_MATERIAL",
    "LABEL_SHIFT_ALPHA",
    "LABEL_SHIFT_MATERIAL",
    "METHODS",
    "MIN_COMPARED",
    "LatencyComparison",
    "build_report",
    "compare_latency",
    "fmt_p",
    "label_distribution",
    "min_sample_size",
    "two_proportion_ztest",
    "wilson_interval",
]

# What the verdict calls material, the canary gates' defaults (GateConfig: max_disagreement,
# max_label_shift, label_shift_alpha, min_compared; tests/unit/test_analysis.py holds them
# equal): a disagreement whose 95 % Wilson interval lies above 20 %, a label shift of more than
# 0.2 total variation with a chi-square p under 0.001, each on at least 50 rows a side.
DISAGREEMENT_MATERIAL = 0.2
LABEL_SHIFT_MATERIAL = 0.2
LABEL_SHIFT_ALPHA = 0.001
MIN_COMPARED = 50

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



# ---------------------------------------------------------------- the report

METHODS = {
    "sequential": (
        "always-valid mSPRT for the difference in accuracy, normal mixture N(0, tau^2) "
        "(Johari, Koomen, Pekelis, Walsh, 'Peeking at A/B tests', KDD 2017): its p-value and "
        "interval stay valid however often the report is read"
    ),
    "multiple_comparisons": (
        "Holm's step-down correction across the candidates with labels (Holm 1979), on the "
        "always-valid p-values: family-wise error at most alpha at every look"
    ),
    "fixed_horizon": (
        "two-sided pooled two-proportion z-test and 95 % Wilson intervals: valid once, at "
        "the planned sample size (min_sample_size); read earlier and repeatedly, it is not"
    ),
    "srm": (
        "sample-ratio mismatch: the assignment counts (pins left out) against the weights in "
        "force per weight period; flagged when the anytime-valid Dirichlet-multinomial test "
        "(Lindon, Malek, 'Anytime-valid inference for multinomial count data', NeurIPS 2022) "
        "gives p < 0.001; Pearson's chi-square beside it"
    ),
    "latency": (
        "Mann-Whitney U on the latency histograms (ties within a bucket, normal approximation), "
        "candidate against baseline, with the Hodges-Lehmann shift as a ratio; fixed-horizon"
    ),
    "disagreement": (
        "without labels: a sampled share (experiment.compare_percent) of each candidate's own "
        "answers is answered by the baseline too; the share of those rows whose predicted "
        "labels differ, with its 95 % Wilson interval"
    ),
    "label_shift": (
        "without labels: total variation distance between the candidate's and the baseline's "
        "predicted-label distributions, and Pearson's chi-square test of homogeneity on the "
        "2 x classes table (fixed-horizon), from 50 answers a side"
    ),
    "regression_errors": (
        "regression models: per arm, the mean absolute error and the RMSE of the answers "
        "against the true values fed back (a vector's error is its mean over the outputs), "
        "with t intervals (the RMSE's from the MSE's), and R^2 pooled over the outputs"
    ),
    "regression_sequential": (
        "regression models: the same always-valid mSPRT for the difference of mean absolute "
        "errors, candidate minus baseline (plug-in variances, tau 10 % of the baseline's MAE), "
        "Holm across candidates; negative means the candidate errs less"
    ),
    "auc": (
        "binary models: the area under the ROC curve from the scores of labelled answers "
        "(binned Mann-Whitney, ties within a bin counted half) with the Hanley-McNeil (1982) "
        "interval"
    ),
}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def label_distribution(labels: Mapping[int, int]) -> dict[str, float] | None:
    """{class index: share} of an arm's predicted labels, by index; None without any.

    The keys are strings, as JSON has them (the report is served as JSON).
    """
    n = sum(labels.values())
    if not n:
        return None
    return {str(k): c / n for k, c in sorted(labels.items()) if c}


def _arm_row(m: ArmMetrics, total_requests: int, weight: float | None) -> dict[str, Any]:
    lo, hi = wilson_interval(m.feedback_correct, m.feedback_total)
    d_lo, d_hi = wilson_interval(m.disagreed, m.compared)
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
        "disagreement": m.disagreement_rate,
        "disagreement_ci95": [d_lo, d_hi] if m.compared else None,
        "compared": m.compared,
        "label_distribution": label_distribution(m.labels),
    }


@dataclass(frozen=True)
class LatencyComparison:
    """Candidate latency against the baseline's, as distributions (``mann_whitney_binned``).

    ``shift_ratio``: the Hodges-Lehmann shift of log latency as a factor
    (1.2: the candidate's requests typically take 20 % longer).
    ``prob_slower``: P(a candidate request is slower than a baseline one),
    ties counted half (0.5: no difference).
    """

    n_candidate: int
    n_baseline: int
    p_value: float  # two-sided
    p_slower: float  # one-sided: the candidate is slower
    prob_slower: float
    shift_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_latency(
    candidate: LatencyHistogram, baseline: LatencyHistogram
) -> LatencyComparison | None:
    """Mann-Whitney on the two histograms; None while either has no requests."""
    if candidate.count == 0 or baseline.count == 0:
        return None
    if (candidate.min_ms, candidate.max_ms, candidate.growth) != (
        baseline.min_ms, baseline.max_ms, baseline.growth
    ):
        raise ValueError("histograms with different bucket layouts cannot be compared")
    mw = mann_whitney_binned(candidate.counts, baseline.counts)
    return LatencyComparison(
        mw.n_x, mw.n_y, mw.p_two_sided, mw.p_greater, mw.prob_greater,
        candidate.growth**mw.shift_bins,
    )


def _pp(x: float) -> str:
    return f"{x * 100:.1f}"


def fmt_p(p: float) -> str:
    """A p-value for people: two significant digits, and no "p = 0"."""
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def _accuracy_phrase(
    name: str, baseline: str, seq: SequentialResult | None, holm_p: float | None,
    n_c: int, n_b: int, m: int, alpha: float,
) -> str:
    if seq is None:
        return (f"{name}: accuracy not compared yet ({n_c} and {n_b} labels; the sequential "
                f"test needs {MIN_LABELS} on each side)")
    conf = f"{(1 - alpha) * 100:g} %"
    lo, hi = seq.ci
    interval = f"always-valid {conf} interval {_pp(lo)} to {_pp(hi)} pp"
    holm_txt = f", Holm-adjusted p {fmt_p(holm_p or 0.0)} over {m} candidates" if m > 1 else ""
    if holm_p is not None and holm_p < alpha:
        word = "better" if seq.delta > 0 else "worse"
        return (f"{name} is {word} than {baseline} in accuracy by {_pp(abs(seq.delta))} pp "
                f"({interval}, p {fmt_p(seq.p_value)}{holm_txt})")
    extra = ""
    if m > 1 and seq.p_value < alpha:
        extra = f"; p {fmt_p(seq.p_value)} alone, not significant after Holm's correction"
    return (f"{name} vs {baseline}: no accuracy difference shown yet, {seq.delta * 100:+.1f} pp "
            f"({interval}{extra})")


def _error_phrase(
    name: str, baseline: str, seq: SequentialResult | None, holm_p: float | None,
    n_c: int, n_b: int, m: int, alpha: float,
) -> str:
    """The regression counterpart of ``_accuracy_phrase``: mean absolute error, lower is
    better, the difference candidate minus baseline."""
    if seq is None:
        return (f"{name}: error not compared yet ({n_c} and {n_b} true values; the sequential "
                f"test needs {MIN_LABELS} on each side)")
    conf = f"{(1 - alpha) * 100:g} %"
    lo, hi = seq.ci
    interval = f"always-valid {conf} interval {lo:+.4g} to {hi:+.4g}"
    holm_txt = f", Holm-adjusted p {fmt_p(holm_p or 0.0)} over {m} candidates" if m > 1 else ""
    if holm_p is not None and holm_p < alpha:
        word = "better" if seq.delta < 0 else "worse"
        return (f"{name} is {word} than {baseline}: mean absolute error {seq.delta:+.4g} "
                f"({interval}, p {fmt_p(seq.p_value)}{holm_txt})")
    extra = ""
    if m > 1 and seq.p_value < alpha:
        extra = f"; p {fmt_p(seq.p_value)} alone, not significant after Holm's correction"
    return (f"{name} vs {baseline}: no error difference shown yet, MAE {seq.delta:+.4g} "
            f"({interval}{extra})")


def _regression_row(m: ErrorMoments | None) -> dict[str, Any]:
    """One arm's errors on the true values fed back: MAE and RMSE with t intervals, R²."""
    if m is None or not m.n:
        return {"n": 0, "mae": None, "mae_ci95": None, "rmse": None, "rmse_ci95": None,
                "r2": None}
    mae_ci, rmse_ci = mae_interval(m), rmse_interval(m)
    return {"n": m.n, "mae": m.mae, "mae_ci95": None if mae_ci is None else list(mae_ci),
            "rmse": m.rmse, "rmse_ci95": None if rmse_ci is None else list(rmse_ci),
            "r2": m.r2}


def _latency_phrase(lat: LatencyComparison | None, alpha: float) -> str:
    if lat is None:
        return "latency: no data to compare"
    if lat.p_value < alpha:
        word = "slower" if lat.shift_ratio > 1 or lat.prob_slower > 0.5 else "faster"
        return (f"latency: {word}, typically x{lat.shift_ratio:.2f} "
                f"(Mann-Whitney p {fmt_p(lat.p_value)})")
    return f"latency: no shift shown (Mann-Whitney p {fmt_p(lat.p_value)})"


def _answers_phrases(name: str, baseline: str, row: Mapping[str, Any]) -> list[str]:
    """The no-label quality, when it is material (see DISAGREEMENT_MATERIAL)."""
    out = []
    ci, n = row["disagreement_ci95"], row["compared"]
    if ci is not None and n >= MIN_COMPARED and ci[0] > DISAGREEMENT_MATERIAL:
        out.append(f"{name} disagrees with {baseline} on {row['disagreement'] * 100:.0f} % of {n} "
                   f"compared answers (95 % interval {ci[0] * 100:.0f} to {ci[1] * 100:.0f} %)")
    tvd, p = row["label_shift"], row["label_shift_p_value"]
    if tvd is not None and tvd > LABEL_SHIFT_MATERIAL and p < LABEL_SHIFT_ALPHA:
        out.append(f"{name} predicts other classes than {baseline} (total variation {tvd:.2f}, "
                   f"chi-square p {fmt_p(p)})")
    return out


def _srm_phrase(srm: Mapping[str, Any]) -> str:
    if srm.get("flagged") is None:
        return "sample-ratio check unavailable (see srm)"
    if srm["flagged"]:
        return (f"SAMPLE-RATIO MISMATCH (sequential p {fmt_p(srm['seq_p_value'])}): "
                "the split is broken, do not act on this comparison")
    return "no sample-ratio mismatch"


def _srm_section(split: SplitTest | None) -> dict[str, Any]:
    if split is None:
        return {
            "available": False, "flagged": None, "p_value": None, "seq_p_value": None,
            "alpha": SRM_ALPHA,
            "summary": "not computed: the controller passes no assignment counts (the routers "
                       "count them per arm with pins left out; see docs/experiments.md)",
        }
    if split.n == 0:
        return {**split.to_dict(), "available": False, "flagged": None}
    return {**split.to_dict(), "available": True}


def build_report(
    arms: Mapping[str, ArmMetrics],
    baseline: str,
    *,
    weights: Mapping[str, float],
    min_detectable_effect: float = 0.02,
    alpha: float = 0.05,
    split: SplitTest | None = None,
    tau: float | None = None,
    kind: str = MULTICLASS,
    errors: Mapping[str, ErrorMoments] | None = None,
    scores: Mapping[str, ScoreHistogram] | None = None,
) -> dict[str, Any]:
    """The experiment report as a JSON-ready dict (no NaN: missing data is ``None``).

    Every arm row has the same keys; the comparison fields are ``None`` for
    the baseline and for a candidate while either side lacks feedback.

    Fixed horizon (``z``, ``p_value``, ``significant``): the z-test, valid
    only read once at the planned sample size (``sample_size_reached``);
    ``p_value_holm`` is Holm-adjusted. ``z > 0``: the candidate is more accurate.

    Sequential (``seq_*``, the one to act on before then): the always-valid
    mSPRT p-value, Holm-adjusted across the candidates with labels
    (``seq_p_value_holm``, ``seq_significant``), the always-valid interval of
    the difference at ``1 - alpha`` (``seq_ci``) and at ``1 - alpha / m``
    (``seq_ci_simultaneous``, all candidates at once). ``tau`` (the
    mixture's scale) defaults to ``min_detectable_effect``.

    ``latency_test`` compares latency distributions (``compare_latency``);
    ``srm`` is the experiment's sample-ratio check (``split``, from
    router/controlplane/split.py); ``verdict`` says it in one line.

    Without labels: ``disagreement`` (``None`` until the arm has compared
    rows; the baseline is not compared with itself), ``disagreement_ci95``
    (Wilson), ``compared`` (rows), ``label_distribution`` (``{class index:
    share}`` of the arm's own answers, ``None`` without any); for a candidate
    ``label_shift`` (total variation from the baseline's distribution) and
    ``label_shift_p_value`` (chi-square homogeneity), ``None`` until both
    have ``MIN_COMPARED`` answers.

    Per output kind (``kind``, models/kinds.py): a regression model's arms carry
    ``regression`` (``errors``' MAE and RMSE with t intervals, R², ``n``) and its
    candidates ``mae_delta`` and the always-valid comparison of the mean absolute errors
    (``mae_seq_*``, Holm across candidates; negative: the candidate errs less); the
    verdict reads the error, not the accuracy. A binary model's arms carry ``auc`` and
    ``auc_ci95`` (Hanley-McNeil) from ``scores``.
    """
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not among the arms {sorted(arms)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tau = min_detectable_effect if tau is None else tau
    total = ArmMetrics()
    for m in arms.values():
        total = total.merge(m)
    base = arms[baseline]
    mde_n: int | None = None
    if base.accuracy is not None:
        mde_n = min_sample_size(base.accuracy, min_detectable_effect, alpha)
    srm = _srm_section(split)
    rows: dict[str, dict[str, Any]] = {}
    seqs: dict[str, SequentialResult] = {}
    fixed_p: dict[str, float] = {}
    for name, m in arms.items():
        row = _arm_row(m, total.requests, weights.get(name))
        row["baseline"] = name == baseline
        row.update(z=None, p_value=None, significant=None, accuracy_delta=None)
        row.update(min_sample_size=None, sample_size_reached=None, p_value_holm=None)
        row.update(seq_p_value=None, seq_p_value_holm=None, seq_significant=None, seq_ci=None,
                   seq_ci_simultaneous=None, latency_test=None, verdict=None)
        row.update(label_shift=None, label_shift_p_value=None)
        if name == baseline:
            row["verdict"] = f"{name} is the baseline"
        else:
            row["min_sample_size"] = mde_n
            if mde_n is not None:
                row["sample_size_reached"] = min(m.feedback_total, base.feedback_total) >= mde_n
            if m.feedback_total and base.feedback_total:
                z, p = two_proportion_ztest(
                    m.feedback_correct, m.feedback_total, base.feedback_correct, base.feedback_total
                )
                row.update(z=z, p_value=p, significant=p < alpha)
                row["accuracy_delta"] = (m.accuracy or 0.0) - (base.accuracy or 0.0)
                fixed_p[name] = p
            if min(m.feedback_total, base.feedback_total) >= MIN_LABELS:
                seqs[name] = msprt_difference(
                    m.feedback_correct, m.feedback_total, base.feedback_correct,
                    base.feedback_total, alpha=alpha, tau=tau,
                )
            lat = compare_latency(m.latency, base.latency)
            row["latency_test"] = None if lat is None else lat.to_dict()
            if min(sum(m.labels.values()), sum(base.labels.values())) >= MIN_COMPARED:
                shift = label_shift(m.labels, base.labels)
                if shift is not None:
                    row["label_shift"], row["label_shift_p_value"] = shift
        rows[name] = row
    for name, adj in zip(fixed_p, holm(list(fixed_p.values())), strict=True):
        rows[name]["p_value_holm"] = adj
    family = len(seqs)
    holm_seq = dict(zip(seqs, holm([r.p_value for r in seqs.values()]), strict=True))
    for name, r in seqs.items():
        rows[name].update(
            seq_p_value=r.p_value, seq_p_value_holm=holm_seq[name],
            seq_significant=holm_seq[name] < alpha, seq_ci=list(r.ci),
            seq_ci_simultaneous=list(r.ci_at(alpha / family)),
        )
    regression = kind == REGRESSION
    err_seqs: dict[str, SequentialResult] = {}
    err = dict(errors or {})
    for name in arms:
        if regression:
            rows[name]["regression"] = _regression_row(err.get(name))
            rows[name].update(mae_delta=None, mae_seq_p_value=None, mae_seq_p_value_holm=None,
                              mae_seq_ci=None, mae_seq_significant=None)
        if kind == BINARY:
            found = auc((scores or {}).get(name) or ScoreHistogram())
            rows[name]["auc"] = None if found is None else found[0]
            rows[name]["auc_ci95"] = None if found is None else list(found[1])
    if regression:
        b_err = err.get(baseline)
        for name in arms:
            c_err = err.get(name)
            if name == baseline or c_err is None or b_err is None:
                continue
            if c_err.mae is not None and b_err.mae is not None:
                rows[name]["mae_delta"] = c_err.mae - b_err.mae
            if min(c_err.n, b_err.n) >= MIN_LABELS:
                found_seq = mae_comparison(c_err, b_err, alpha=alpha)
                if found_seq is not None:
                    err_seqs[name] = found_seq
        holm_err = dict(zip(err_seqs, holm([r.p_value for r in err_seqs.values()]), strict=True))
        for name, r in err_seqs.items():
            rows[name].update(mae_seq_p_value=r.p_value, mae_seq_p_value_holm=holm_err[name],
                              mae_seq_significant=holm_err[name] < alpha, mae_seq_ci=list(r.ci))
    verdicts: dict[str, str] = {}
    for name, m in arms.items():
        if name == baseline:
            continue
        lat_dict = rows[name]["latency_test"]
        lat = None if lat_dict is None else LatencyComparison(**lat_dict)
        if regression:
            quality = _error_phrase(
                name, baseline, err_seqs.get(name), holm_err.get(name),
                err[name].n if name in err else 0, err[baseline].n if baseline in err else 0,
                len(err_seqs), alpha)
        else:
            quality = _accuracy_phrase(name, baseline, seqs.get(name), holm_seq.get(name),
                                       m.feedback_total, base.feedback_total, family, alpha)
        line = "; ".join((
            quality,
            _latency_phrase(lat, alpha),
            *_answers_phrases(name, baseline, rows[name]),
            _srm_phrase(srm),
        ))
        rows[name]["verdict"] = verdicts[name] = line
    totals = _arm_row(total, total.requests, sum(weights.get(n, 0.0) for n in arms))
    return {
        "kind": kind,
        "baseline": baseline,
        "alpha": alpha,
        "min_detectable_effect": min_detectable_effect,
        "tau": tau,
        "arms": rows,
        "totals": totals,
        "srm": srm,
        "verdicts": verdicts,
        "methods": dict(METHODS),
    }
