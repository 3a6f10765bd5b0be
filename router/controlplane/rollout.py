"""Glue between the canary state machine and the live experiment. Pure, no Ray.

``Rollout`` holds a plan, its state and the metric snapshot at the start of
the current window. ``tick`` turns the experiment's cumulative metrics into
the window's, asks ``router.controlplane.canary.evaluate`` for a decision, and says which
experiment operation (``router.controlplane.operations``) carries it out:

    advance  -> SetWeights({candidate: step %, baseline: the rest})
    promote  -> Promote(candidate)   (the candidate becomes the baseline)
    rollback -> Rollback(candidate)  (the candidate to 0 % at once)

Other candidates keep their weights throughout. The plan's last step, 100 %,
means all the traffic they leave: the candidate takes the whole of the
baseline's share, and then is promoted. Any other step must fit beside them:

* at start, a plan with a step that does not fit is refused (``InvalidInput``,
  422) and nothing changes;
* during the run (an operator raised another candidate meanwhile), a window
  whose gates pass but whose next step does not fit *pauses* the canary with
  the reason (the numbers and what to do): the candidate keeps its weight,
  nobody moves, and ``resume`` continues once there is room, or ``abort``
  rolls it back. That is what Argo Rollouts does when it needs a person (a
  paused rollout with a reason); rolling back would punish a healthy
  candidate for an operator's change, and retrying every tick says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from models.kinds import MULTICLASS
from router.controlplane.canary import (
    MAX_HISTORY,
    Action,
    CanaryPlan,
    CanaryState,
    CanaryStatus,
    Decision,
    abort,
    evaluate,
    new_state,
    pause,
    refuse,
    resume,
    start,
)
from router.controlplane.kind_stats import ErrorMoments
from router.controlplane.operations import Operation, Promote, Rollback, SetWeights
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats
from serve.errors import InvalidInput

__all__ = ["Rollout", "does_not_fit", "weights_for"]

_TOLERANCE = 1e-9


def _others(current: Mapping[str, float], baseline: str, candidate: str) -> dict[str, float]:
    return {v: w for v, w in current.items() if v not in (baseline, candidate) and w > 0}


def does_not_fit(
    current: Mapping[str, float], baseline: str, candidate: str, percent: float
) -> str | None:
    """Why ``candidate`` cannot go to ``percent`` beside the other candidates, or None.

    100 % always fits: it means all the traffic the others leave.
    """
    others = _others(current, baseline, candidate)
    total = sum(others.values())
    if percent >= 100.0 or percent + total <= 100.0 + _TOLERANCE:
        return None
    listed = ", ".join(f"{v} {w:g}%" for v, w in sorted(others.items()))
    return (
        f"{candidate} at {percent:g}% does not fit beside the other candidates' {total:g}% "
        f"({listed}): at most {100.0 - total:g}% is left; lower them first "
        "(abserve traffic / PUT /admin/weights)"
    )


def weights_for(
    current: Mapping[str, float], baseline: str, candidate: str, percent: float
) -> dict[str, float]:
    """The candidate at ``percent``; the baseline takes what the other arms leave.

    ``percent`` 100 is the whole of what the other candidates leave (the plan's
    last step); any other step that does not fit raises ``ValueError``.
    """
    reason = does_not_fit(current, baseline, candidate, percent)
    if reason is not None:
        raise ValueError(reason)
    others = sum(_others(current, baseline, candidate).values())
    share = 100.0 - others if percent >= 100.0 else percent
    return {candidate: share, baseline: max(0.0, 100.0 - others - share)}


@dataclass
class Rollout:
    plan: CanaryPlan
    state: CanaryState
    base: dict[str, ArmMetrics] = field(default_factory=dict)  # cumulative at window start
    base_window: int = -1
    # A regression model's errors when the canary first ticked: its error gate judges
    # every true value fed back since (the ledger's running sums minus these).
    errors_base: dict[str, ErrorMoments] | None = None

    @classmethod
    def create(cls, plan: CanaryPlan) -> Rollout:
        return cls(plan, new_state(plan))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"plan": self.plan.to_dict(), "state": self.state.to_dict()}
        if self.base_window >= 0:  # the window's start, so that a restart carries it on
            data["window_base"] = {"window": self.base_window,
                                   "metrics": {v: m.to_dict() for v, m in self.base.items()}}
        if self.errors_base is not None:
            data["errors_base"] = {v: m.to_dict() for v, m in self.errors_base.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        rollout = cls(CanaryPlan.from_dict(data["plan"]), CanaryState.from_dict(data["state"]))
        saved = data.get("window_base")
        if saved is not None:
            rollout.base = {v: ArmMetrics.from_dict(m) for v, m in saved["metrics"].items()}
            rollout.base_window = int(saved["window"])
        if data.get("errors_base") is not None:
            rollout.errors_base = {v: ErrorMoments.from_dict(m)
                                   for v, m in data["errors_base"].items()}
        return rollout

    def _errors_since_start(
        self, errors: Mapping[str, ErrorMoments] | None
    ) -> tuple[ErrorMoments, ErrorMoments] | None:
        if errors is None:
            return None
        arms = (self.plan.candidate, self.plan.baseline)
        now = {v: errors.get(v, ErrorMoments()) for v in arms}
        if self.errors_base is None:
            self.errors_base = now
        try:
            return (now[arms[0]].since(self.errors_base[arms[0]]),
                    now[arms[1]].since(self.errors_base[arms[1]]))
        except ValueError:  # the sums went back (a lost journal): count from here on
            self.errors_base = now
            return ErrorMoments(), ErrorMoments()

    def _window(self, merged: Mapping[str, ArmMetrics]) -> tuple[ArmMetrics, ArmMetrics]:
        if self.base_window != self.state.window:
            self.base = {v: merged.get(v, ArmMetrics()) for v in (self.plan.candidate,
                                                                 self.plan.baseline)}
            self.base_window = self.state.window
        cand = merged.get(self.plan.candidate, ArmMetrics())
        base = merged.get(self.plan.baseline, ArmMetrics())
        try:
            return (cand.subtract(self.base[self.plan.candidate]),
                    base.subtract(self.base[self.plan.baseline]))
        except ValueError:
            # The counters went back past the window's start (a router that died with the
            # controller lost its last second): the window starts again from here.
            self.base = {self.plan.candidate: cand, self.plan.baseline: base}
            return ArmMetrics(), ArmMetrics()

    def check_fits(self, weights: Mapping[str, float]) -> None:
        """Refuses (InvalidInput) a plan whose steps do not fit beside the other candidates."""
        for percent in self.plan.steps:
            reason = does_not_fit(weights, self.plan.baseline, self.plan.candidate, percent)
            if reason is not None:
                raise InvalidInput(f"canary plan: step {percent:g}%: {reason}, "
                                   "or keep the steps before 100 within that", field="steps")

    def start(self, weights: Mapping[str, float], now: float) -> SetWeights:
        """The first step's weights; refuses a plan whose steps do not fit (nothing changes)."""
        self.check_fits(weights)
        op = SetWeights(weights_for(
            weights, self.plan.baseline, self.plan.candidate, self.plan.steps[0]))
        self.state = start(self.plan, self.state, now)
        return op

    def pause(self, now: float) -> None:
        self.state = pause(self.state, now, "operator")

    def resume(self, now: float) -> None:
        self.state = resume(self.state, now)

    def abort(self, now: float) -> Rollback | None:
        """None for a plan that never started (waiting for its replay): nothing to roll back."""
        started = self.state.status is not CanaryStatus.PENDING
        self.state = abort(self.state, now, "operator")
        return Rollback(self.plan.candidate) if started else None

    def refuse(self, now: float, reason: str) -> None:
        self.state = refuse(self.state, now, reason)

    def tick(
        self,
        merged: Mapping[str, ArmMetrics],
        weights: Mapping[str, float],
        now: float,
        shadow: ShadowStats | None = None,
        in_force: Mapping[str, float] | None = None,
        *,
        kind: str = MULTICLASS,
        errors: Mapping[str, ErrorMoments] | None = None,
        drift: Mapping[str, Any] | None = None,
    ) -> tuple[Decision, Operation | None]:
        """``weights``: the stored weights (the next step is computed from them);
        ``in_force``: the effective ones the routers served the window with (a paused
        experiment sends everything to the baseline), for the sample-ratio gate. ``kind`` and
        ``errors`` (the ledger's running regression errors per version) feed the error
        gate of a regression model."""
        cand, base = self._window(merged)
        before = self.state
        self.state, decision = evaluate(self.plan, self.state, cand, base, now, shadow=shadow,
                                        weights=in_force, kind=kind,
                                        errors=self._errors_since_start(errors),
                                        drift=drift)
        if decision.action is Action.ADVANCE:
            reason = does_not_fit(
                weights, self.plan.baseline, self.plan.candidate, decision.new_weight)
            if reason is not None:
                return self._hold(before, decision, reason), None
            return decision, SetWeights(weights_for(
                weights, self.plan.baseline, self.plan.candidate, decision.new_weight))
        if decision.action is Action.PROMOTE:
            return decision, Promote(self.plan.candidate)
        if decision.action is Action.ROLLBACK:
            return decision, Rollback(self.plan.candidate)
        return decision, None

    def _hold(self, before: CanaryState, passed: Decision, reason: str) -> Decision:
        """Gates passed but the next step has no room: pause at the current step, with why."""
        where = f"step {before.step + 1}/{len(self.plan.steps)} ({before.weight:g}%)"
        decision = replace(
            passed,
            action=Action.PAUSE,
            new_weight=before.weight,
            reasons=(*passed.reasons,  # the gates, and why the advance did not happen
                     f"paused at {where}: every gate passed, but the next step cannot start: "
                     f"{reason}; then resume the canary, or abort it"),
        )
        self.state = replace(
            before,
            status=CanaryStatus.PAUSED,
            history=(*before.history, decision)[-MAX_HISTORY:],
            updated_at=decision.time,
            step_started_at=decision.time,
            window=before.window + 1,
            consecutive_failures=0,
        )
        return decision
