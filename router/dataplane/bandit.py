"""Thompson-sampling traffic policy with a floor share per arm. Pure Python, no Ray.

Each arm's reward (correct answer, conversion: any yes/no feedback) is a
Beta(1 + successes, 1 + failures) posterior. For every request the policy
draws one sample per arm and routes to the largest, so traffic drifts to the
arm that is more likely the best while uncertain arms keep being tried.

Floor semantics, exactly: with ``K`` eligible arms, a request is routed
uniformly at random with probability ``min(1, floor * K)`` and by Thompson
sampling otherwise. Every arm therefore gets at least ``floor`` of the
traffic in expectation, whatever the evidence, so a losing arm keeps
producing feedback (rewards drift; the report needs a sample) and no arm is
starved by an early unlucky streak. ``floor * K = 1`` means uniform routing.

``floor * K`` above 1 is a floor no split can give: each arm would get
``1 / K``, less than promised. The experiment config refuses it
(``ExperimentConfig`` checks ``bandit_floor_percent`` against the arms with weight
> 0, for the config file and every admin change alike); a policy built
by hand with such a floor routes uniformly, and ``floor_holds`` says so.

Eligible arms are those with ``weight > 0``: the configured weights switch
arms on and off but do not otherwise shape the split.

User keys are ignored: assignments follow the evidence and so must move as
it accrues; sticky assignment would freeze the split the bandit exists to
change. Experiments that need stickiness use ``WeightedPolicy``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.dataplane.policy import Arm, RouteContext

__all__ = ["ThompsonPolicy"]


@dataclass
class ThompsonPolicy:
    floor: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    successes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor: must be a fraction in [0, 1], got {self.floor}")

    def update(self, version: str, reward: bool, n: int = 1) -> None:
        """Count ``n`` feedback events of ``version``; an unseen version starts at Beta(1, 1)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        counts = self.successes if reward else self.failures
        counts[version] = counts.get(version, 0) + n

    def _eligible(self, arms: Sequence[Arm]) -> list[Arm]:
        eligible = [a for a in arms if a.weight > 0]
        if not eligible:
            raise ValueError("no arm has a weight > 0; the bandit has nothing to choose from")
        return eligible

    def _thompson(self, arms: Sequence[Arm], rng: random.Random) -> Arm:
        best, best_draw = arms[0], -1.0
        for arm in arms:
            draw = rng.betavariate(
                1 + self.successes.get(arm.version, 0), 1 + self.failures.get(arm.version, 0)
            )
            if draw > best_draw:
                best, best_draw = arm, draw
        return best

    def floor_holds(self, arms: Sequence[Arm]) -> bool:
        """Can every eligible arm get ``floor`` at once (``floor * K <= 1``)?"""
        return self.floor * len(self._eligible(arms)) <= 1.0 + 1e-9

    def _choose(self, arms: Sequence[Arm], rng: random.Random) -> Arm:
        if rng.random() < min(1.0, self.floor * len(arms)):
            return arms[rng.randrange(len(arms))]
        return self._thompson(arms, rng)

    def choose(self, ctx: RouteContext, arms: Sequence[Arm]) -> Arm:
        """Route one request; ``ctx.user_key`` is ignored (see the module docstring)."""
        return self._choose(self._eligible(arms), self.rng)

    def traffic_shares(
        self,
        n_samples: int = 10_000,
        *,
        arms: Sequence[Arm] | None = None,
        rng: random.Random | None = None,
    ) -> dict[str, float]:
        """Monte Carlo estimate of each arm's current share, for reports.

        Uses its own rng (seed 0 by default) so reporting never shifts the
        routing sequence. Without ``arms``, every version with feedback.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if arms is None:
            arms = [Arm(v, 1.0) for v in sorted({*self.successes, *self.failures})]
        eligible = self._eligible(arms)
        rng = rng if rng is not None else random.Random(0)
        counts = dict.fromkeys((a.version for a in eligible), 0)
        for _ in range(n_samples):
            counts[self._choose(eligible, rng).version] += 1
        return {v: c / n_samples for v, c in counts.items()}

    def posterior_mean(self, version: str) -> float:
        s, f = self.successes.get(version, 0), self.failures.get(version, 0)
        return (1 + s) / (2 + s + f)

    def to_dict(self) -> dict[str, Any]:
        """Counts and floor; the rng is not state worth keeping across restarts."""
        return {
            "floor": self.floor,
            "successes": dict(self.successes),
            "failures": dict(self.failures),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], rng: random.Random | None = None) -> ThompsonPolicy:
        return cls(
            floor=float(data.get("floor", 0.05)),
            rng=rng if rng is not None else random.Random(),
            successes={str(k): int(v) for k, v in dict(data.get("successes", {})).items()},
            failures={str(k): int(v) for k, v in dict(data.get("failures", {})).items()},
        )
