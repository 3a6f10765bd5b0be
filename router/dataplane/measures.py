"""Per-arm counters that router replicas keep and the controller merges. Pure Python.

Everything here is a plain value that merges and round-trips through JSON,
so router replicas can each keep their own counters, the controller can sum
them, and a report or a canary window survives a restart.

Latency is a log-bucket histogram rather than a list of samples: fixed
memory per arm however long the experiment runs, and two replicas' histograms
merge by adding counts (quantiles of a merged sample cannot be derived from
the replicas' quantiles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArmMetrics", "ArmWindow", "LatencyHistogram"]

MIN_MS = 0.05
MAX_MS = 60_000.0
GROWTH = 1.05


def _bucket_count(min_ms: float, max_ms: float, growth: float) -> int:
    return math.ceil(math.log(max_ms / min_ms) / math.log(growth))


@dataclass
class LatencyHistogram:
    """Latencies in ms in buckets growing by ``growth`` from ``min_ms`` to ``max_ms``.

    Bucket 0 holds values below ``min_ms``, the last bucket values from
    ``max_ms`` up; bucket ``i`` in between holds ``[min_ms * g**(i-1),
    min_ms * g**i)``. A quantile is its bucket's geometric midpoint, clamped
    to the observed min and max, so its relative error is at most
    ``sqrt(growth) - 1`` (2.5 % for the default 5 % growth) inside the range.
    """

    min_ms: float = MIN_MS
    max_ms: float = MAX_MS
    growth: float = GROWTH
    counts: list[int] = field(default_factory=list, repr=False)
    count: int = 0
    sum_ms: float = 0.0
    min_seen: float | None = None
    max_seen: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.min_ms < self.max_ms and self.growth > 1):
            raise ValueError("histogram: need 0 < min_ms < max_ms and growth > 1")
        size = _bucket_count(self.min_ms, self.max_ms, self.growth) + 2
        if not self.counts:
            self.counts = [0] * size
        elif len(self.counts) != size:
            raise ValueError(f"histogram: counts has {len(self.counts)} buckets, expected {size}")
        self._log_growth = math.log(self.growth)

    @property
    def n_buckets(self) -> int:
        return len(self.counts)

    def _index(self, ms: float) -> int:
        if ms < self.min_ms:
            return 0
        if ms >= self.max_ms:
            return self.n_buckets - 1
        i = int(math.log(ms / self.min_ms) / self._log_growth) + 1
        return min(i, self.n_buckets - 2)

    def _bounds(self, i: int) -> tuple[float, float]:
        if i == 0:
            return 0.0, self.min_ms
        if i == self.n_buckets - 1:
            return self.max_ms, math.inf
        return self.min_ms * self.growth ** (i - 1), min(self.min_ms * self.growth**i, self.max_ms)

    def record(self, ms: float, n: int = 1) -> None:
        """Count ``n`` requests that took ``ms``; a negative or NaN latency is a caller bug."""
        if not ms >= 0:  # also catches NaN
            raise ValueError(f"latency must be >= 0 ms, got {ms!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.counts[self._index(ms)] += n
        self.count += n
        self.sum_ms += ms * n
        self.min_seen = ms if self.min_seen is None else min(self.min_seen, ms)
        self.max_seen = ms if self.max_seen is None else max(self.max_seen, ms)

    @property
    def mean_ms(self) -> float | None:
        return self.sum_ms / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) in ms; ``None`` without data, not 0 ms."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        i = self._bucket_of_rank(max(1, math.ceil(q * self.count)))
        lo, hi = self._bounds(i)
        if i == 0:
            value = lo if self.min_seen is None else self.min_seen
        elif i == self.n_buckets - 1:
            value = hi if self.max_seen is None else self.max_seen
        else:
            value = math.sqrt(lo * hi)
        if self.min_seen is not None:
            value = max(value, self.min_seen)
        if self.max_seen is not None:
            value = min(value, self.max_seen)
        return value

    def _bucket_of_rank(self, rank: int) -> int:
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return i
        return self.n_buckets - 1

    def _check_layout(self, other: LatencyHistogram) -> None:
        if (self.min_ms, self.max_ms, self.growth) != (other.min_ms, other.max_ms, other.growth):
            raise ValueError("histograms with different bucket layouts cannot be combined")

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram of both samples; neither input changes."""
        self._check_layout(other)
        mins = [m for m in (self.min_seen, other.min_seen) if m is not None]
        maxs = [m for m in (self.max_seen, other.max_seen) if m is not None]
        return LatencyHistogram(
            self.min_ms,
            self.max_ms,
            self.growth,
            [a + b for a, b in zip(self.counts, other.counts, strict=True)],
            self.count + other.count,
            self.sum_ms + other.sum_ms,
            min(mins) if mins else None,
            max(maxs) if maxs else None,
        )

    def subtract(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """What was recorded since the snapshot ``earlier`` of this same histogram.

        Lets a caller derive a window from cumulative counters. The exact
        min/max of the window are unknown; they become the bounds of its
        outermost non-empty buckets.
        """
        self._check_layout(earlier)
        counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        if any(c < 0 for c in counts):
            raise ValueError("subtract: 'earlier' is not a snapshot of this histogram")
        nonempty = [i for i, c in enumerate(counts) if c]
        min_seen = max_seen = None
        if nonempty:
            min_seen = self._bounds(nonempty[0])[0]
            hi = self._bounds(nonempty[-1])[1]
            max_seen = hi if math.isfinite(hi) else self.max_seen
        return LatencyHistogram(
            self.min_ms,
            self.max_ms,
            self.growth,
            counts,
            self.count - earlier.count,
            max(0.0, self.sum_ms - earlier.sum_ms),
            min_seen,
            max_seen,
        )

    def to_dict(self) -> dict[str, Any]:
        """Sparse: only non-empty buckets, keyed by their index as a string (JSON keys)."""
        return {
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "growth": self.growth,
            "count": self.count,
            "sum_ms": self.sum_ms,
            "min_seen": self.min_seen,
            "max_seen": self.max_seen,
            "buckets": {str(i): c for i, c in enumerate(self.counts) if c},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        hist = cls(
            float(data.get("min_ms", MIN_MS)),
            float(data.get("max_ms", MAX_MS)),
            float(data.get("growth", GROWTH)),
        )
        for key, c in dict(data.get("buckets", {})).items():
            i = int(key)
            if not 0 <= i < hist.n_buckets or int(c) < 0:
                raise ValueError(f"histogram: bad bucket {key!r}: {c!r}")
            hist.counts[i] = int(c)
        hist.count = sum(hist.counts)
        if "count" in data and int(data["count"]) != hist.count:
            raise ValueError(f"histogram: count {data['count']} != sum of buckets {hist.count}")
        hist.sum_ms = float(data.get("sum_ms", 0.0))
        hist.min_seen = None if data.get("min_seen") is None else float(data["min_seen"])
        hist.max_seen = None if data.get("max_seen") is None else float(data["max_seen"])
        return hist


@dataclass
class ArmMetrics:
    """What one arm did in one window (or since the start): counters that add up.

    ``errors`` are client-visible failures of requests routed to this arm;
    ``fallbacks`` are requests routed here that the baseline answered
    instead (the arm failed, the client did not notice). Rates are per
    routed request. ``assigned`` counts the requests the policy drew this
    arm for at random, leaving out those pinned by ``X-Model-Version`` and
    those with a sticky user key (one draw per user, not per request): the counts the
    sample-ratio test (router/controlplane/split.py) compares with the
    weights. It stays 0 where the caller does not say (``record(assigned=...)``).

    The quality of answers without labels: ``labels`` counts the labels this
    arm answered (predicted class -> rows, fallbacks left out), so that the
    candidate's label distribution can be compared with the baseline's;
    ``compared`` and ``disagreed`` count the rows of the arm's own answers
    that the baseline also answered, in the background, on a sampled share
    (``experiment.compare_percent``), and how many of them got another label.
    """

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    answered: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    feedback_correct: int = 0
    feedback_total: int = 0
    assigned: int = 0
    labels: dict[int, int] = field(default_factory=dict)
    compared: int = 0
    disagreed: int = 0
    compared_abs_diff: float = 0.0  # sum over compared rows of the mean |ours - baseline|

    def record(
        self,
        latency_ms: float | None = None,
        *,
        error: bool = False,
        fallback: bool = False,
        assigned: bool = False,
    ) -> None:
        """One routed request; ``latency_ms`` is None when it never got an answer.

        ``assigned``: the policy drew the arm at random (no pin, no user key).
        """
        self.requests += 1
        self.assigned += int(assigned)
        self.errors += int(error)
        self.fallbacks += int(fallback)
        if not error and not fallback:
            self.answered += 1
        if latency_ms is not None:
            self.latency.record(latency_ms)

    def record_labels(self, labels: Iterable[int]) -> None:
        """The labels of one answer's rows (this arm's own answer, not a fallback)."""
        for label in labels:
            self.labels[label] = self.labels.get(label, 0) + 1

    def record_comparison(self, rows: int, disagreed: int, abs_diff: float = 0.0) -> None:
        self.compared += rows
        self.disagreed += disagreed
        self.compared_abs_diff += abs_diff

    @property
    def compared_mean_abs_diff(self) -> float | None:
        """Mean absolute difference from the baseline's answers (regression's disagreement
        in the output's units; for a classifier, of the probabilities)."""
        return self.compared_abs_diff / self.compared if self.compared else None

    @property
    def disagreement_rate(self) -> float | None:
        return self.disagreed / self.compared if self.compared else None

    def record_feedback(self, correct: bool, n: int = 1) -> None:
        self.feedback_total += n
        self.feedback_correct += n if correct else 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def fallback_rate(self) -> float | None:
        return self.fallbacks / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    def merge(self, other: ArmMetrics) -> ArmMetrics:
        """A new sum of both (two replicas, or two windows); neither input changes."""
        return ArmMetrics(
            self.requests + other.requests,
            self.errors + other.errors,
            self.fallbacks + other.fallbacks,
            self.answered + other.answered,
            self.latency.merge(other.latency),
            self.feedback_correct + other.feedback_correct,
            self.feedback_total + other.feedback_total,
            self.assigned + other.assigned,
            {k: self.labels.get(k, 0) + other.labels.get(k, 0)
             for k in self.labels.keys() | other.labels.keys()},
            self.compared + other.compared,
            self.disagreed + other.disagreed,
            self.compared_abs_diff + other.compared_abs_diff,
        )

    def subtract(self, earlier: ArmMetrics) -> ArmMetrics:
        """The window since the snapshot ``earlier`` of these cumulative counters."""
        out = ArmMetrics(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.fallbacks - earlier.fallbacks,
            self.answered - earlier.answered,
            self.latency.subtract(earlier.latency),
            self.feedback_correct - earlier.feedback_correct,
            self.feedback_total - earlier.feedback_total,
            self.assigned - earlier.assigned,
            {k: n - earlier.labels.get(k, 0) for k, n in self.labels.items()
             if n - earlier.labels.get(k, 0)},
            self.compared - earlier.compared,
            self.disagreed - earlier.disagreed,
            self.compared_abs_diff - earlier.compared_abs_diff,
        )
        if (
            min(
                out.requests,
                out.assigned,
                out.errors,
                out.fallbacks,
                out.answered,
                out.feedback_correct,
                out.feedback_total,
                out.compared,
                out.disagreed,
                *out.labels.values(),
            )
            < 0
            or set(earlier.labels) - set(self.labels)
        ):
            raise ValueError("subtract: 'earlier' is not a snapshot of these metrics")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "answered": self.answered,
            "latency": self.latency.to_dict(),
            "feedback_correct": self.feedback_correct,
            "feedback_total": self.feedback_total,
            "assigned": self.assigned,
            "labels": {str(k): n for k, n in sorted(self.labels.items())},
            "compared": self.compared,
            "disagreed": self.disagreed,
            "compared_abs_diff": self.compared_abs_diff,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmMetrics:
        latency = data.get("latency")
        return cls(
            requests=int(data.get("requests", 0)),
            errors=int(data.get("errors", 0)),
            fallbacks=int(data.get("fallbacks", 0)),
            answered=int(data.get("answered", 0)),
            latency=LatencyHistogram() if latency is None else LatencyHistogram.from_dict(latency),
            feedback_correct=int(data.get("feedback_correct", 0)),
            feedback_total=int(data.get("feedback_total", 0)),
            assigned=int(data.get("assigned", 0)),
            labels={int(k): int(n) for k, n in data.get("labels", {}).items()},
            compared=int(data.get("compared", 0)),
            disagreed=int(data.get("disagreed", 0)),
            compared_abs_diff=float(data.get("compared_abs_diff", 0.0)),
        )


ArmWindow = ArmMetrics  # the same counters; the name says "one step's window" at call sites
