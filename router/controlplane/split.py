"""Sample-ratio mismatch (SRM): the observed split against the weights in force. No Ray.

A broken split (a hash or policy bug, a router on stale weights) or a biased
loss of requests makes every comparison in the report untrustworthy, and the
assignment counts are the one place it shows. Two tests on the same counts:

- chi-square: ``(O - E)^T Cov^+ (O - E)`` against chi-square with ``rank(Cov)``
  degrees of freedom, valid at one look. The canary judges each window once,
  so its gate uses this one.
- sequential: the product over weight periods of Lindon and Malek's
  Dirichlet-multinomial Bayes factors (router/controlplane/stats.py), an
  anytime-valid p-value. The live report is recomputed every few seconds, so
  it flags on this one: a chi-square checked after every 100 requests up to
  20,000 false-alarms on 1.8 % of correct 50/50 experiments instead of 0.1 %
  (tests/unit/test_split.py); the sequential test on under 0.1 %.

Exact under weight changes: counts are kept per weight period. With ``n_p``
the counts of period ``p`` (``N_p`` in all) under shares ``pi_p``:
``O = sum n_p``, ``E = sum N_p pi_p``, ``Cov = sum N_p (diag(pi_p) - pi_p pi_p^T)``,
all three additive. With one period the statistic is Pearson's chi-square.
A count on an arm whose share was 0 is a mismatch outright (p = 0).

``SplitTally`` is that accumulator; ``SplitMonitor`` feeds it from the
routers' cumulative counts, sync by sync, and counts an interval only when
the router is known to have served all of it under one set of weights.
``SrmGauges`` exports the check as serve/telemetry.py's CONTROLLER_METRICS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.controlplane.stats import chi2_sf, dirichlet_multinomial_log_bf
from serve.telemetry import CONTROLLER_METRICS, MetricSpec

__all__ = [
    "CONCENTRATION",
    "SRM_ALPHA",
    "SplitMonitor",
    "SplitTally",
    "SplitTest",
    "SrmGauges",
    "shares_of",
]

SRM_ALPHA = 0.001  # what flags an experiment (the usual SRM threshold: Fabijan et al. 2019)
# Dirichlet prior concentration: the prior's sd of a 50 % share is 1.6 points, of a 5 % share
# 0.7 points: most powerful for mismatches of about that size.
CONCENTRATION = 1000.0
MAX_PERIODS = 64  # distinct weight vectors kept; older ones are folded into closed_log_bf
_SHARE_DIGITS = 9


def shares_of(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights (percent or any scale) as shares that sum to 1; arms at weight <= 0 get 0."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError(f"no arm has weight > 0: {dict(weights)}")
    return {a: (w / total if w > 0 else 0.0) for a, w in weights.items()}


def _period_key(shares: Mapping[str, float]) -> str:
    return ",".join(f"{a}={round(s, _SHARE_DIGITS)!r}" for a, s in sorted(shares.items()))


def _parse_key(key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in key.split(","):
        arm, _, share = part.rpartition("=")
        out[arm] = float(share)
    return out


@dataclass(frozen=True)
class SplitTest:
    """The result of both tests on one tally (JSON via ``to_dict``)."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float | None  # None when a count fell on an arm at weight 0 (statistic infinite)
    df: int
    p_value: float  # chi-square, one look
    seq_p_value: float  # anytime-valid (Lindon-Malek)
    alpha: float
    zero_weight_arms: tuple[str, ...]  # arms that got assignments while their share was 0
    periods: int

    @property
    def n(self) -> int:
        return sum(self.observed.values())

    @property
    def flagged(self) -> bool:
        """What the report flags on: the sequential p-value (it is looked at continuously)."""
        return self.seq_p_value < self.alpha

    def gauges(self) -> dict[str, float]:
        """The values of serve/telemetry.py's CONTROLLER_METRICS (tag: the experiment)."""
        return {"abserve_srm_p_value": self.seq_p_value,
                "abserve_srm_mismatch": 1.0 if self.flagged else 0.0}

    def describe(self) -> str:
        if self.n == 0:
            return "no assignment counts yet"
        obs = ", ".join(
            f"{a} {self.observed[a]} (expected {self.expected.get(a, 0.0):.0f})"
            for a in sorted(self.observed)
        )
        if self.zero_weight_arms:
            why = f"assignments to {', '.join(self.zero_weight_arms)} while at weight 0"
        else:
            why = f"chi-square p = {self.p_value:.2g}, sequential p = {self.seq_p_value:.2g}"
        verdict = "SAMPLE-RATIO MISMATCH" if self.flagged else "no sample-ratio mismatch"
        return f"{verdict}: {why}; observed {obs}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed": dict(self.observed),
            "expected": dict(self.expected),
            "n": self.n,
            "chi2": self.chi2,
            "df": self.df,
            "p_value": self.p_value,
            "seq_p_value": self.seq_p_value,
            "alpha": self.alpha,
            "flagged": self.flagged,
            "zero_weight_arms": list(self.zero_weight_arms),
            "periods": self.periods,
            "summary": self.describe(),
        }


@dataclass
class SplitTally:
    """Assignment counts and what the weights in force made of them, over weight periods."""

    observed: dict[str, int] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)
    cov: dict[str, dict[str, float]] = field(default_factory=dict)
    periods: dict[str, dict[str, int]] = field(default_factory=dict)  # shares key -> counts
    closed_log_bf: float = 0.0  # periods folded away (MAX_PERIODS); -inf never, +inf possible
    zero_weight_arms: set[str] = field(default_factory=set)

    def add(self, counts: Mapping[str, int], weights: Mapping[str, float]) -> None:
        """Assignments made while ``weights`` were in force (counts of arms absent from
        ``weights`` are counts at weight 0)."""
        if any(c < 0 for c in counts.values()):
            raise ValueError(f"counts must be >= 0, got {dict(counts)}")
        n = sum(counts.values())
        if n == 0:
            return
        shares = shares_of({**{a: 0.0 for a in counts}, **weights})
        arms = sorted(shares)
        for a in arms:
            pa = shares[a]
            self.observed[a] = self.observed.get(a, 0) + int(counts.get(a, 0))
            self.expected[a] = self.expected.get(a, 0.0) + n * pa
            row = self.cov.setdefault(a, {})
            for b in arms:
                pb = shares[b]
                row[b] = row.get(b, 0.0) + n * ((pa if a == b else 0.0) - pa * pb)
            if pa == 0.0 and counts.get(a, 0) > 0:
                self.zero_weight_arms.add(a)
        key = _period_key(shares)
        period = self.periods.pop(key, {})  # re-inserted last: the dict is oldest-first
        for a, c in counts.items():
            period[a] = period.get(a, 0) + int(c)
        self.periods[key] = period
        while len(self.periods) > MAX_PERIODS:
            old_key = next(iter(self.periods))
            self.closed_log_bf += _period_log_bf(old_key, self.periods.pop(old_key))

    def test(self, alpha: float = SRM_ALPHA, concentration: float = CONCENTRATION) -> SplitTest:
        arms = sorted(a for a in self.observed if self.observed[a] or self.expected.get(a, 0.0))
        observed = {a: self.observed[a] for a in arms}
        expected = {a: self.expected.get(a, 0.0) for a in arms}
        periods = len(self.periods)
        zero = tuple(sorted(self.zero_weight_arms))
        if zero:
            return SplitTest(observed, expected, None, max(len(arms) - 1, 0), 0.0, 0.0, alpha,
                             zero, periods)
        live = [a for a in arms if expected[a] > 0]
        chi2, df, p = 0.0, 0, 1.0
        if len(live) > 1:
            d = np.array([observed[a] - expected[a] for a in live])
            cov = np.array([[self.cov[a].get(b, 0.0) for b in live] for a in live])
            scale = max(float(np.abs(cov).max()), 1.0)
            df = int(np.linalg.matrix_rank(cov / scale, tol=1e-9))
            if df > 0:
                chi2 = float(d @ np.linalg.pinv(cov, rcond=1e-9, hermitian=True) @ d)
                p = chi2_sf(max(chi2, 0.0), df)
        log_bf = self.closed_log_bf + sum(
            _period_log_bf(key, counts, concentration) for key, counts in self.periods.items()
        )
        seq_p = 1.0 if log_bf <= 0 else math.exp(-min(log_bf, 700.0))
        return SplitTest(observed, expected, chi2, df, p, seq_p, alpha, (), periods)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed": dict(self.observed),
            "expected": dict(self.expected),
            "cov": {a: dict(row) for a, row in self.cov.items()},
            "periods": {k: dict(v) for k, v in self.periods.items()},
            "closed_log_bf": self.closed_log_bf,
            "zero_weight_arms": sorted(self.zero_weight_arms),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitTally:
        return cls(
            observed={a: int(n) for a, n in dict(data.get("observed", {})).items()},
            expected={a: float(e) for a, e in dict(data.get("expected", {})).items()},
            cov={a: {b: float(c) for b, c in dict(row).items()}
                 for a, row in dict(data.get("cov", {})).items()},
            periods={k: {a: int(n) for a, n in dict(v).items()}
                     for k, v in dict(data.get("periods", {})).items()},
            closed_log_bf=float(data.get("closed_log_bf", 0.0)),
            zero_weight_arms=set(data.get("zero_weight_arms", ())),
        )


def _period_log_bf(key: str, counts: Mapping[str, int],
                   concentration: float = CONCENTRATION) -> float:
    shares = _parse_key(key)
    live = sorted(a for a, s in shares.items() if s > 0)
    if any(counts.get(a, 0) > 0 for a, s in shares.items() if s == 0):
        return math.inf
    if len(live) < 2:
        return 0.0  # one arm holds everything: nothing to test
    probs = [shares[a] for a in live]
    total = sum(probs)
    return dirichlet_multinomial_log_bf(
        [counts.get(a, 0) for a in live], [p / total for p in probs], concentration
    )


@dataclass
class _Seen:
    counts: dict[str, int]
    told_before: str | None  # the weights told at the sync before the last one
    told_last: str | None  # the weights told at the last sync
    shares_last: dict[str, float] | None


@dataclass
class SplitMonitor:
    """Feeds a ``SplitTally`` from router replicas' cumulative assignment counts.

    A router applies the revision a sync's reply names before it builds its
    next report, so the requests between report ``i - 1`` and report ``i``
    were served under the weights told at sync ``i - 1``, except those before
    that reply was applied, which were under the weights told at sync
    ``i - 2``. An interval is counted only when those two agree; the others
    (one per replica and weight change, and each replica's first two) are
    left out and counted in ``excluded``. A counter that went down (a reset)
    starts that replica over. ``weights=None`` means no weights are in force
    (the bandit policy): nothing is counted until weights are.
    """

    tally: SplitTally = field(default_factory=SplitTally)
    excluded: int = 0
    _seen: dict[str, _Seen] = field(default_factory=dict, repr=False)

    def observe(
        self, replica: str, counts: Mapping[str, int], weights: Mapping[str, float] | None
    ) -> None:
        """``counts``: the replica's cumulative assignments per arm (pins left out);
        ``weights``: what the controller tells it in this sync's reply."""
        shares = None
        if weights is not None and any(w > 0 for w in weights.values()):
            shares = shares_of(weights)
        key = None if shares is None else _period_key(shares)
        prev = self._seen.get(replica)
        counts = {a: int(c) for a, c in counts.items()}
        if prev is not None:
            delta = {a: counts.get(a, 0) - prev.counts.get(a, 0)
                     for a in set(counts) | set(prev.counts)}
            if any(d < 0 for d in delta.values()):
                prev = None  # a reset: start this replica over
            elif (prev.told_last is not None and prev.told_before == prev.told_last
                  and prev.shares_last is not None):
                self.tally.add(delta, prev.shares_last)
            else:
                self.excluded += sum(delta.values())
        self._seen[replica] = _Seen(
            counts,
            None if prev is None else prev.told_last,
            key,
            shares,
        )

    def forget(self, replica: str) -> None:
        self._seen.pop(replica, None)

    def test(self, alpha: float = SRM_ALPHA) -> SplitTest:
        return self.tally.test(alpha)


class SrmGauges:
    """The sample-ratio check as gauges (CONTROLLER_METRICS, tag ``experiment``).

    ``factory`` makes one metric object per spec (``serve.telemetry.ray_metric_factory``
    in the controller; anything with ``set(value, tags)`` in tests). ``update`` after
    each sync: the test is recomputed only when the tally counted something new, and
    nothing is set before it has counts (no p = 1 for an experiment not checked yet).
    """

    def __init__(self, factory: Callable[[MetricSpec], Any]) -> None:
        self.gauges = {name: factory(spec) for name, spec in CONTROLLER_METRICS.items()}
        self._last: tuple[str, int, int] | None = None

    def update(self, monitor: SplitMonitor, experiment: str) -> SplitTest | None:
        """Set the gauges from ``monitor``'s test; the test, or None when nothing changed."""
        tally = monitor.tally
        key = (experiment, id(tally), sum(tally.observed.values()))
        if key[2] == 0 or key == self._last:
            return None
        test = monitor.test()
        tags = {"experiment": experiment}
        for name, value in test.gauges().items():
            self.gauges[name].set(value, tags=tags)
        self._last = key
        return test
