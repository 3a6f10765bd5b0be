"""Shadow traffic: which requests to mirror, and how a shadow compares. Pure, no Ray.

A shadow version sees a copy of live inputs; its answer is never returned.
What matters is how often it would have answered differently (label
agreement), by how much (mean absolute difference of the class
probabilities), and what it would have cost (its errors and latency).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.dataplane.measures import LatencyHistogram

__all__ = ["ShadowStats", "pick_shadows", "should_shadow"]


def should_shadow(u: float, share: float) -> bool:
    """Mirror this request? ``u`` is a uniform draw in [0, 1), ``share`` a fraction in [0, 1].

    Taking ``u`` rather than an rng lets the caller choose the draw: random,
    or ``unit_hash(request_id)`` so that every replica agrees.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"shadow share must be in [0, 1], got {share}")
    return u < share


def pick_shadows(shares: Mapping[str, float], rng: random.Random) -> tuple[str, ...]:
    """The shadow versions that get a copy of this request: one independent draw each.

    Independent draws keep each shadow's sample uniform whatever the others'
    shares are; the order follows ``shares``.
    """
    return tuple(v for v, share in shares.items() if should_shadow(rng.random(), share))


def _as_rows(probs: Any) -> np.ndarray:
    a = np.asarray(probs, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(
            f"expected probabilities of shape (n_classes,) or (n, n_classes), got {a.shape}"
        )
    return a


@dataclass
class ShadowStats:
    """Running comparison of one shadow version with the primary answers.

    ``compared`` counts rows (inputs), not requests: a batch of 32 rows is
    32 comparisons. ``errors`` counts failed shadow calls, which contribute
    no rows. Ties in argmax resolve to the lowest class index on both sides.
    """

    compared: int = 0
    agreed: int = 0
    abs_diff_sum: float = 0.0  # sum over rows of the mean |p - q| over classes
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, primary_probs: Any, shadow_probs: Any, agreed: Any = None) -> None:
        """Compare the primary's and the shadow's answers (outputs) for the same rows.

        ``agreed``: per row, whether they agree, as the model's kind says
        (``OutputSpec.agreement``); without it, whether the argmax labels are equal.
        """
        p, q = _as_rows(primary_probs), _as_rows(shadow_probs)
        if p.shape != q.shape:
            raise ValueError(f"primary {p.shape} and shadow {q.shape} answers differ in shape")
        self.compared += p.shape[0]
        if agreed is None:
            agreed = p.argmax(axis=1) == q.argmax(axis=1)
        self.agreed += int(np.count_nonzero(agreed))
        self.abs_diff_sum += float(np.abs(p - q).mean(axis=1).sum())

    def record_error(self, n: int = 1) -> None:
        self.errors += n

    def record_latency(self, ms: float) -> None:
        self.latency.record(ms)

    @property
    def agreement_rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.compared if self.compared else None

    @property
    def p50_ms(self) -> float | None:
        return self.latency.quantile(0.5)

    @property
    def p99_ms(self) -> float | None:
        return self.latency.quantile(0.99)

    def merge(self, other: ShadowStats) -> ShadowStats:
        """A new sum of both; neither input changes."""
        return ShadowStats(
            self.compared + other.compared,
            self.agreed + other.agreed,
            self.abs_diff_sum + other.abs_diff_sum,
            self.errors + other.errors,
            self.latency.merge(other.latency),
        )

    def summary(self) -> dict[str, Any]:
        """The derived figures for a report (JSON-ready)."""
        return {
            "compared": self.compared,
            "agreement_rate": self.agreement_rate,
            "mean_abs_diff": self.mean_abs_diff,
            "errors": self.errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "abs_diff_sum": self.abs_diff_sum,
            "errors": self.errors,
            "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShadowStats:
        stats = cls(
            compared=int(data.get("compared", 0)),
            agreed=int(data.get("agreed", 0)),
            abs_diff_sum=float(data.get("abs_diff_sum", 0.0)),
            errors=int(data.get("errors", 0)),
        )
        if "latency" in data:
            stats.latency = LatencyHistogram.from_dict(data["latency"])
        if not 0 <= stats.agreed <= stats.compared:
            raise ValueError(f"shadow stats: agreed {stats.agreed} not in [0, {stats.compared}]")
        return stats
