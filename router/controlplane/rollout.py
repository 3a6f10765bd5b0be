"""Glue between the canary state machine and the live experiment. Pure, no Ray.

``Rollout`` holds a plan, its state and the metric snapshot at the start of
the current window. ``tick`` turns the experiment's cumulative metrics into
the window's, asks ``router.controlplane.canary.evaluate`` for a decision, and says which
experiment operation (``router.controlplane.operations``) carries it out:

    advance  -> SetWeights({candidate: step %, baseline: the rest})
    promote  -> Promote(candidate)   (the candidate becomes the baseline)
    rollback -> Rollback(candidate)  (the candidate to 0 % at once)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.controlplane.canary import (
    Action,
    CanaryPlan,
    CanaryState,
    Decision,
    abort,
    evaluate,
    new_state,
    pause,
    resume,
    start,
)
from router.controlplane.operations import Operation, Promote, Rollback, SetWeights
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats

__all__ = ["Rollout", "weights_for"]


def weights_for(
    current: Mapping[str, float], baseline: str, candidate: str, percent: float
) -> dict[str, float]:
    """The candidate at ``percent``; the baseline takes what the other arms leave."""
    others = sum(w for v, w in current.items() if v not in (baseline, candidate))
    if percent + others > 100.0 + 1e-9:
        raise ValueError(
            f"{candidate} at {percent:g}% does not fit beside the other candidates' {others:g}%"
        )
    return {candidate: percent, baseline: 100.0 - others - percent}


@dataclass
class Rollout:
    plan: CanaryPlan
    state: CanaryState
    base: dict[str, ArmMetrics] = field(default_factory=dict)  # cumulative at window start
    base_window: int = -1

    @classmethod
    def create(cls, plan: CanaryPlan) -> Rollout:
        return cls(plan, new_state(plan))

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "state": self.state.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        # The window's snapshot is not persisted: after a restart the window starts again.
        return cls(CanaryPlan.from_dict(data["plan"]), CanaryState.from_dict(data["state"]))

    def _window(self, merged: Mapping[str, ArmMetrics]) -> tuple[ArmMetrics, ArmMetrics]:
        if self.base_window != self.state.window:
            self.base = {v: merged.get(v, ArmMetrics()) for v in (self.plan.candidate,
                                                                 self.plan.baseline)}
            self.base_window = self.state.window
        cand = merged.get(self.plan.candidate, ArmMetrics())
        base = merged.get(self.plan.baseline, ArmMetrics())
        return (cand.subtract(self.base[self.plan.candidate]),
                base.subtract(self.base[self.plan.baseline]))

    def start(self, weights: Mapping[str, float], now: float) -> SetWeights:
        self.state = start(self.plan, self.state, now)
        return SetWeights(weights_for(
            weights, self.plan.baseline, self.plan.candidate, self.state.weight))

    def pause(self, now: float) -> None:
        self.state = pause(self.state, now, "operator")

    def resume(self, now: float) -> None:
        self.state = resume(self.state, now)

    def abort(self, now: float) -> Rollback:
        self.state = abort(self.state, now, "operator")
        return Rollback(self.plan.candidate)

    def tick(
        self,
        merged: Mapping[str, ArmMetrics],
        weights: Mapping[str, float],
        now: float,
        shadow: ShadowStats | None = None,
    ) -> tuple[Decision, Operation | None]:
        cand, base = self._window(merged)
        self.state, decision = evaluate(self.plan, self.state, cand, base, now, shadow=shadow)
        if decision.action is Action.ADVANCE:
            return decision, SetWeights(weights_for(
                weights, self.plan.baseline, self.plan.candidate, decision.new_weight))
        if decision.action is Action.PROMOTE:
            return decision, Promote(self.plan.candidate)
        if decision.action is Action.ROLLBACK:
            return decision, Rollback(self.plan.candidate)
        return decision, None
