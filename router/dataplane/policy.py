"""Traffic policies: which arm answers a request. Pure Python, no Ray.

Sticky assignment maps a user key to a point ``u`` in [0, 1) with a stable
hash (blake2b, not Python's salted ``hash``), then looks ``u`` up in a layout
of intervals derived from the weights alone, so the same key and the same
weights always give the same arm, on every router replica.

The layout is built so that a canary ramp is monotone: candidate ``i`` of
``K`` owns an interval that starts at its fixed anchor ``i / K`` and grows
with its weight; the baseline owns what is left. Raising one candidate's
weight (taking it from the baseline) therefore only moves baseline users into
that candidate: its own users stay, and every other candidate keeps exactly
its users. This holds while every candidate's weight is at most 100/K percent
(always, for a single canary). Past that the intervals are packed one after
another in config order, which still splits traffic exactly but may reshuffle
users between candidates.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Arm",
    "Layout",
    "Policy",
    "RouteContext",
    "WeightedPolicy",
    "build_layout",
    "unit_hash",
]


@dataclass(frozen=True)
class Arm:
    version: str
    weight: float  # percent, 0..100
    baseline: bool = False


@dataclass(frozen=True)
class RouteContext:
    """What a policy may look at; grows without breaking call sites."""

    user_key: str | None = None
    experiment: str = "default"


@dataclass(frozen=True)
class Layout:
    """Intervals ``[start, end)`` of [0, 1) owned by candidates; the rest is the baseline's."""

    intervals: tuple[tuple[float, float, Arm], ...]
    baseline: Arm
    monotone: bool

    def lookup(self, u: float) -> Arm:
        for start, end, arm in self.intervals:
            if start <= u < end:
                return arm
        return self.baseline


class Policy(Protocol):
    def choose(self, ctx: RouteContext, arms: Sequence[Arm]) -> Arm: ...


def unit_hash(key: str, salt: str = "") -> float:
    """A stable hash of ``key`` to [0, 1), identical across processes and hosts."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def build_layout(arms: Sequence[Arm]) -> Layout:
    baselines = [a for a in arms if a.baseline]
    if len(baselines) != 1:
        raise ValueError("exactly one arm must be the baseline")
    baseline = baselines[0]
    candidates = [a for a in arms if not a.baseline]
    shares = [a.weight / 100.0 for a in candidates]
    k = len(candidates)
    intervals: list[tuple[float, float, Arm]] = []
    if k and all(s <= 1.0 / k for s in shares):
        for i, (arm, share) in enumerate(zip(candidates, shares, strict=True)):
            if share > 0:
                intervals.append((i / k, i / k + share, arm))
        return Layout(tuple(intervals), baseline, monotone=True)
    start = 0.0
    for arm, share in zip(candidates, shares, strict=True):
        if share > 0:
            intervals.append((start, start + share, arm))
            start += share
    return Layout(tuple(intervals), baseline, monotone=False)


@dataclass
class WeightedPolicy:
    """Weighted split; sticky when the request has a user key.

    ``salt`` is the experiment name: a user lands independently in different
    experiments. ``rng`` is injected so tests are deterministic.
    """

    salt: str = "default"
    rng: random.Random = field(default_factory=random.Random)
    _cache: dict[tuple[Arm, ...], Layout] = field(default_factory=dict, repr=False)

    def layout(self, arms: Sequence[Arm]) -> Layout:
        key = tuple(arms)
        layout = self._cache.get(key)
        if layout is None:
            if len(self._cache) > 64:  # weights change rarely; keep this bounded anyway
                self._cache.clear()
            layout = self._cache[key] = build_layout(arms)
        return layout

    def choose(self, ctx: RouteContext, arms: Sequence[Arm]) -> Arm:
        u = self.rng.random() if ctx.user_key is None else unit_hash(ctx.user_key, self.salt)
        return self.layout(arms).lookup(u)
