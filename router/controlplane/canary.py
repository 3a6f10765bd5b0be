"""Automated canary analysis: a pure state machine over plain values. No Ray.

A plan ramps a candidate through traffic steps (5, 10, 25, 50, 100 %). The
controller calls ``evaluate`` on a timer with the metrics of the current
step's window; each call returns the new state and a ``Decision``:

    hold      the window is not done yet (interval not elapsed or too few
              candidate requests), or a gate failed fewer than N times in a row
    advance   every gate passed: go to the next step's weight
    promote   every gate passed on the last (100 %) step
    rollback  gates failed on N consecutive windows: weight 0, for good

Every verdict (pass or fail) closes the window: ``state.window`` increments
and ``step_started_at`` moves to ``now``, so N failures need N fresh
windows, each at least ``interval_s`` long with ``min_requests`` candidate
requests. The caller starts new counters when ``state.window`` changes
(``ArmMetrics.subtract`` turns cumulative counters into a window).

A gate whose data is missing (no baseline traffic at 100 %, feedback or
shadow comparisons below their minimum) is *skipped* and says so in the
reasons ("lacks data: ..."); it neither passes nor fails the window. A
window passes only once a gate on the answers (``ANSWER_QUALITY_GATES``)
has its data; until then it holds and goes on (a failing gate still fails it).

Quality gates, beside the rates and p99 (docs/experiments.md, Statistics):

    accuracy_noninferiority  on by default (margin 2 points): the always-valid
              mSPRT interval of candidate - baseline accuracy over every label
              since the canary started (``CanaryState.labels``); fails when it
              lies below -margin, passes above, inconclusive (neither) between
    srm       on by default (p < 0.001 fails): the window's assignment counts
              (pins left out) against the weights in force, allowing the first
              ``srm_grace_s`` of the window at the previous step's weights
    latency_shift  off by default: Mann-Whitney on the latency histograms,
              fails when the candidate is slower (one-sided p < latency_alpha)
              by more than ``max_latency_shift`` (Hodges-Lehmann ratio)
    disagreement  on by default, needs no labels: the share of the candidate's
              rows that the baseline, asked too on ``experiment.compare_percent``
              of them, labels otherwise; fails when its 95 % Wilson interval lies
              wholly above ``max_disagreement`` (0.2)
    label_shift  on by default, needs no labels: the total variation distance
              between the candidate's and the baseline's predicted-label
              distributions in the window; fails when it is over
              ``max_label_shift`` (0.2) and a chi-square test of homogeneity
              says the difference is real (p < ``label_shift_alpha``, 0.001)
    drift     off by default (``drift: true``): fails while the candidate's drift
              window (router/controlplane/drift.py) holds an alert: an input
              channel's PSI or KS, or its labels' JS distance, past the config's
              ``drift`` thresholds; skips without a reference or enough rows

Every verdict's last reason names these gates with their numbers.

A plan with a replay gate (``CanaryPlan.replay``, serve.config's ``ReplayGateConfig``)
stays ``pending`` while the controller replays the prediction log with the candidate
(router/controlplane/service.py); passed, it starts as any plan; refused, ``refuse``
ends it as ``refused`` without its candidate ever getting traffic.

``now`` is wall-clock seconds (``time.time()``), not monotonic: the state is
persisted as JSON and must mean the same thing after a controller restart.
Verdicts and operator actions go into ``state.history``; plain waits do not
(they happen on every tick and say nothing new).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from models.kinds import MULTICLASS, REGRESSION
from router.controlplane.analysis import compare_latency, fmt_p, wilson_interval
from router.controlplane.kind_stats import ErrorMoments, mae_comparison, mae_noninferiority
from router.controlplane.stats import (
    DEFAULT_TAU,
    label_shift,
    msprt_difference,
    noninferiority,
)
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats
from serve.config import ReplayGateConfig

__all__ = [
    "Action",
    "CanaryPlan",
    "CanaryState",
    "CanaryStatus",
    "Decision",
    "GateConfig",
    "GateResult",
    "Verdict",
    "abort",
    "QUALITY_GATES",
    "check_gates",
    "evaluate",
    "expected_share",
    "label_shift",
    "window_srm",
    "new_state",
    "pause",
    "refuse",
    "resume",
    "start",
]

MAX_HISTORY = 500  # newest entries kept; a flapping canary must not grow the state forever

Metrics = dict[str, float | int | None]
# The gates on what the candidate answers and how its traffic splits (the decision line
# names each, with its numbers); the others are its error, fallback and latency rates.
QUALITY_GATES = (
    "accuracy_noninferiority", "accuracy_delta", "error_noninferiority", "disagreement",
    "label_shift", "srm", "latency_shift", "shadow_agreement",
)
# A regression model has no labels: these are not judged for it (error_noninferiority is
# its quality gate on the fed-back values, disagreement compares its values).
LABEL_GATES = frozenset({"accuracy_noninferiority", "accuracy_delta", "label_shift"})
# The gates that judge the answers themselves: a window is judged only once one of the
# enabled ones has its data (the others may pass on rates and latency alone).
ANSWER_QUALITY_GATES = frozenset(
    {"accuracy_noninferiority", "accuracy_delta", "error_noninferiority", "disagreement",
     "label_shift", "shadow_agreement"}
)
MIN_LATENCY_SAMPLES = 20  # per arm, for the rank test's normal approximation


class CanaryStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"  # never started: its replay gate refused the candidate


class Action(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    REFUSE = "refuse"  # a pending plan's replay gate refused it


class Verdict(StrEnum):
    WAIT = "wait"  # the window is not complete; gates not evaluated
    PASS = "pass"
    FAIL = "fail"
    MANUAL = "manual"  # an operator action, not a gate verdict


def _rate_field(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a fraction in [0, 1], got {value}")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a candidate's step window must meet. ``None`` turns a gate off.

    Rates are fractions (0.01 = 1 %). ``max_error_rate_delta`` and
    ``max_p99_ratio`` compare with the baseline's window; ``min_accuracy_delta``
    is the least acceptable ``candidate accuracy - baseline accuracy``
    (e.g. -0.02 tolerates a two-point drop), checked once both arms have
    ``min_feedback`` labelled answers in the window (a point estimate, off by
    default).

    ``accuracy_margin`` (0.02): the sequential non-inferiority gate on every
    label since the canary started, once both arms have ``min_feedback``:
    fails when the always-valid ``1 - accuracy_alpha`` interval of the
    difference lies below ``-accuracy_margin``. ``srm_alpha`` (0.001): the
    window's sample-ratio test fails below it; ``srm_grace_s`` of each window
    may still be at the previous step's weights (routers pick a change up
    within ``state.poll_interval_s``). ``max_latency_shift`` (off): fails when
    the candidate's latency distribution is slower (Mann-Whitney one-sided
    p < ``latency_alpha``) by more than this ratio (1.2 = 20 %).

    ``mae_margin`` (0.05): a regression model's quality gate, the sequential
    non-inferiority of the mean absolute error on every true value fed back since the
    canary started, once both arms have ``min_feedback``: fails when the always-valid
    ``1 - accuracy_alpha`` interval of ``candidate MAE - baseline MAE`` lies above
    ``mae_margin`` times the baseline's MAE (5 % worse). The label gates (accuracy,
    label shift) are not judged for a regression model.
    """

    max_error_rate: float | None = 0.01
    max_error_rate_delta: float | None = None
    max_fallback_rate: float | None = 0.05
    max_p99_ratio: float | None = 1.5
    max_p99_ms: float | None = None
    min_shadow_agreement: float | None = None
    min_shadow_samples: int = 100
    min_accuracy_delta: float | None = None
    min_feedback: int = 200
    failures_to_rollback: int = 3
    accuracy_margin: float | None = 0.02
    mae_margin: float | None = 0.05
    accuracy_alpha: float = 0.05
    srm_alpha: float | None = 0.001
    srm_grace_s: float = 5.0
    max_latency_shift: float | None = None
    latency_alpha: float = 0.01
    max_disagreement: float | None = 0.2
    max_label_shift: float | None = 0.2
    label_shift_alpha: float = 0.001
    min_compared: int = 50
    # Off by default: fails a window while the candidate's input or label drift is past the
    # config's drift thresholds (router/controlplane/drift.py; the controller's sliding
    # drift window, not the step's), skips while it has no reference or too few rows.
    drift: bool = False

    def __post_init__(self) -> None:
        _rate_field("gates.max_error_rate", self.max_error_rate)
        _rate_field("gates.max_error_rate_delta", self.max_error_rate_delta)
        _rate_field("gates.max_fallback_rate", self.max_fallback_rate)
        _rate_field("gates.min_shadow_agreement", self.min_shadow_agreement)
        _rate_field("gates.max_disagreement", self.max_disagreement)
        _rate_field("gates.max_label_shift", self.max_label_shift)
        if self.min_compared < 1:
            raise ValueError(f"gates.min_compared: must be >= 1, got {self.min_compared}")
        if self.max_p99_ratio is not None and not self.max_p99_ratio > 0:
            raise ValueError(f"gates.max_p99_ratio: must be > 0, got {self.max_p99_ratio}")
        if self.max_p99_ms is not None and not self.max_p99_ms > 0:
            raise ValueError(f"gates.max_p99_ms: must be > 0 ms, got {self.max_p99_ms}")
        if self.min_accuracy_delta is not None and not -1.0 <= self.min_accuracy_delta <= 1.0:
            raise ValueError(
                f"gates.min_accuracy_delta: must be in [-1, 1] (e.g. -0.02), "
                f"got {self.min_accuracy_delta}"
            )
        if self.min_shadow_samples < 1:
            raise ValueError(
                f"gates.min_shadow_samples: must be >= 1, got {self.min_shadow_samples}"
            )
        if self.min_feedback < 1:
            raise ValueError(f"gates.min_feedback: must be >= 1, got {self.min_feedback}")
        if self.failures_to_rollback < 1:
            raise ValueError(
                f"gates.failures_to_rollback: must be >= 1, got {self.failures_to_rollback}"
            )
        if self.accuracy_margin is not None and not 0.0 <= self.accuracy_margin < 1.0:
            raise ValueError(
                f"gates.accuracy_margin: must be in [0, 1) (0.02 = two points), "
                f"got {self.accuracy_margin}"
            )
        if self.mae_margin is not None and not (math.isfinite(self.mae_margin)
                                                and self.mae_margin >= 0.0):
            raise ValueError(f"gates.mae_margin: must be >= 0 (0.05 = 5 % of the baseline's "
                             f"MAE), got {self.mae_margin}")
        for name in ("accuracy_alpha", "srm_alpha", "latency_alpha", "label_shift_alpha"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"gates.{name}: must be in (0, 1), got {value}")
        if not (math.isfinite(self.srm_grace_s) and self.srm_grace_s >= 0):
            raise ValueError(f"gates.srm_grace_s: must be >= 0 seconds, got {self.srm_grace_s}")
        if self.max_latency_shift is not None and not self.max_latency_shift >= 1.0:
            raise ValueError(
                f"gates.max_latency_shift: must be a ratio >= 1 (1.2 = 20 % slower), "
                f"got {self.max_latency_shift}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"gates: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class CanaryPlan:
    """The ramp of one candidate against one baseline; immutable once started."""

    candidate: str
    baseline: str
    steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    interval_s: float = 300.0
    min_requests: int = 500
    gates: GateConfig = field(default_factory=GateConfig)
    # A replay of the prediction log the candidate must pass before its first step (the
    # user's view, in percent: nothing here computes with it).
    replay: ReplayGateConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        if not self.candidate:
            raise ValueError("candidate: must name a version")
        if not self.baseline:
            raise ValueError("baseline: must name a version")
        if self.candidate == self.baseline:
            raise ValueError(f"candidate: must differ from the baseline ({self.baseline!r})")
        if not self.steps:
            raise ValueError("steps: need at least one step, ending at 100")
        for s in self.steps:
            if not (math.isfinite(s) and 0.0 < s <= 100.0):
                raise ValueError(f"steps: each step must be a percent in (0, 100], got {s:g}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps: must increase strictly, got {list(self.steps)}")
        if self.steps[-1] != 100.0:
            raise ValueError(f"steps: the last step must be 100, got {self.steps[-1]:g}")
        if not (math.isfinite(self.interval_s) and self.interval_s >= 0):
            raise ValueError(f"interval_s: must be >= 0 seconds, got {self.interval_s}")
        if self.min_requests < 0:
            raise ValueError(f"min_requests: must be >= 0, got {self.min_requests}")
        if not isinstance(self.gates, GateConfig):
            raise ValueError("gates: must be a GateConfig")
        if self.replay is not None and not isinstance(self.replay, ReplayGateConfig):
            raise ValueError("replay: must be a ReplayGateConfig")

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "steps": list(self.steps),
            "interval_s": self.interval_s,
            "min_requests": self.min_requests,
            "gates": self.gates.to_dict(),
            "replay": None if self.replay is None else self.replay.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanaryPlan:
        return cls(
            candidate=str(data["candidate"]),
            baseline=str(data["baseline"]),
            steps=tuple(float(s) for s in data.get("steps", (5, 10, 25, 50, 100))),
            interval_s=float(data.get("interval_s", 300.0)),
            min_requests=int(data.get("min_requests", 500)),
            gates=GateConfig.from_dict(data.get("gates", {})),
            replay=(None if data.get("replay") is None
                    else ReplayGateConfig.model_validate(data["replay"])),
        )


@dataclass(frozen=True)
class GateResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    message: str
    brief: str = ""  # the numbers in a few words, for the decision line


@dataclass(frozen=True)
class Decision:
    """One decision of the controller; verdicts and operator actions are kept in history.

    ``step`` and ``weight`` are those of the window that was judged;
    ``new_weight`` is the candidate's weight afterwards.
    """

    time: float
    action: Action
    verdict: Verdict
    step: int
    weight: float
    new_weight: float
    reasons: tuple[str, ...] = ()
    metrics: Mapping[str, float | int | None] = field(default_factory=dict)

    @property
    def new_window(self) -> bool:
        """Must the caller start new window counters?"""
        return self.verdict in (Verdict.PASS, Verdict.FAIL) or self.action in (
            Action.START,
            Action.RESUME,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "action": str(self.action),
            "verdict": str(self.verdict),
            "step": self.step,
            "weight": self.weight,
            "new_weight": self.new_weight,
            "reasons": list(self.reasons),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            time=float(data["time"]),
            action=Action(data["action"]),
            verdict=Verdict(data["verdict"]),
            step=int(data["step"]),
            weight=float(data["weight"]),
            new_weight=float(data["new_weight"]),
            reasons=tuple(str(r) for r in data.get("reasons", ())),
            metrics=dict(data.get("metrics", {})),
        )


@dataclass(frozen=True)
class CanaryState:
    """Where a plan stands. Round-trips through JSON (``to_dict``/``from_dict``)."""

    candidate: str
    baseline: str
    status: CanaryStatus = CanaryStatus.PENDING
    step: int = 0
    weight: float = 0.0  # the candidate's current traffic percent
    started_at: float | None = None
    step_started_at: float | None = None  # start of the current window
    window: int = 0  # increments with every new window
    consecutive_failures: int = 0
    updated_at: float | None = None
    history: tuple[Decision, ...] = ()
    # Labels (correct, total) of the windows judged so far: the sequential accuracy gate
    # judges all of them, not one window's (the evidence adds up over the steps).
    candidate_labels: tuple[int, int] = (0, 0)
    baseline_labels: tuple[int, int] = (0, 0)

    @property
    def done(self) -> bool:
        return self.status in (CanaryStatus.PROMOTED, CanaryStatus.ROLLED_BACK,
                               CanaryStatus.REFUSED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "status": str(self.status),
            "step": self.step,
            "weight": self.weight,
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "window": self.window,
            "consecutive_failures": self.consecutive_failures,
            "updated_at": self.updated_at,
            "history": [d.to_dict() for d in self.history],
            "labels": {"candidate": list(self.candidate_labels),
                       "baseline": list(self.baseline_labels)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanaryState:
        def opt(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        def label_pair(arm: str) -> tuple[int, int]:
            correct, total = data.get("labels", {}).get(arm, (0, 0))
            return int(correct), int(total)

        return cls(
            candidate=str(data["candidate"]),
            baseline=str(data["baseline"]),
            status=CanaryStatus(data.get("status", "pending")),
            step=int(data.get("step", 0)),
            weight=float(data.get("weight", 0.0)),
            started_at=opt("started_at"),
            step_started_at=opt("step_started_at"),
            window=int(data.get("window", 0)),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            updated_at=opt("updated_at"),
            history=tuple(Decision.from_dict(d) for d in data.get("history", ())),
            candidate_labels=label_pair("candidate"),
            baseline_labels=label_pair("baseline"),
        )


def _record(state: CanaryState, decision: Decision, **changes: Any) -> CanaryState:
    history = (*state.history, decision)[-MAX_HISTORY:]
    return replace(state, history=history, updated_at=decision.time, **changes)


def _check_plan(plan: CanaryPlan, state: CanaryState) -> None:
    if (plan.candidate, plan.baseline) != (state.candidate, state.baseline):
        raise ValueError(
            f"state is for {state.candidate} vs {state.baseline}, "
            f"the plan for {plan.candidate} vs {plan.baseline}"
        )
    if not 0 <= state.step < len(plan.steps):
        raise ValueError(f"state step {state.step} is outside the plan's {len(plan.steps)} steps")


def new_state(plan: CanaryPlan) -> CanaryState:
    """A pending canary: no candidate traffic until ``start``."""
    return CanaryState(plan.candidate, plan.baseline)


def start(plan: CanaryPlan, state: CanaryState, now: float) -> CanaryState:
    _check_plan(plan, state)
    if state.status is not CanaryStatus.PENDING:
        raise ValueError(f"cannot start a canary that is {state.status}")
    weight = plan.steps[0]
    d = Decision(
        now,
        Action.START,
        Verdict.MANUAL,
        0,
        0.0,
        weight,
        (f"started: {plan.candidate} at {weight:g}% against {plan.baseline}",),
    )
    return _record(
        state,
        d,
        status=CanaryStatus.RUNNING,
        step=0,
        weight=weight,
        started_at=now,
        step_started_at=now,
        window=state.window + 1,
    )


def _manual(
    state: CanaryState, now: float, action: Action, to_weight: float, reason: str,
    **changes: Any,
) -> CanaryState:
    """An operator's decision, recorded like the gates' own."""
    d = Decision(now, action, Verdict.MANUAL, state.step, state.weight, to_weight, (reason,))
    return _record(state, d, **changes)


def pause(state: CanaryState, now: float, reason: str = "") -> CanaryState:
    """Stop judging and advancing; the candidate keeps its current weight."""
    if state.status is not CanaryStatus.RUNNING:
        raise ValueError(f"cannot pause a canary that is {state.status}")
    return _manual(state, now, Action.PAUSE, state.weight,
                   f"paused{': ' + reason if reason else ''}", status=CanaryStatus.PAUSED)


def resume(state: CanaryState, now: float) -> CanaryState:
    """Continue at the same step with a fresh window (paused time proves nothing)."""
    if state.status is not CanaryStatus.PAUSED:
        raise ValueError(f"cannot resume a canary that is {state.status}")
    return _manual(
        state, now, Action.RESUME, state.weight,
        f"resumed at step {state.step + 1} ({state.weight:g}%)",
        status=CanaryStatus.RUNNING, step_started_at=now, window=state.window + 1,
    )


def abort(state: CanaryState, now: float, reason: str = "") -> CanaryState:
    """An operator's rollback: weight 0, status rolled_back."""
    if state.done:
        raise ValueError(f"cannot abort a canary that is already {state.status}")
    return _manual(
        state, now, Action.ROLLBACK, 0.0,
        f"rolled back by an operator{': ' + reason if reason else ''}",
        status=CanaryStatus.ROLLED_BACK, weight=0.0,
    )


def refuse(state: CanaryState, now: float, reason: str) -> CanaryState:
    """A pending plan that never starts (its replay gate refused the candidate)."""
    if state.status is not CanaryStatus.PENDING:
        raise ValueError(f"cannot refuse a canary that is {state.status}")
    d = Decision(now, Action.REFUSE, Verdict.FAIL, 0, 0.0, 0.0, (f"refused: {reason}",))
    return _record(state, d, status=CanaryStatus.REFUSED)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def expected_share(
    weights: Mapping[str, float],
    candidate: str,
    baseline: str,
    previous_weight: float | None,
    elapsed_s: float,
    grace_s: float,
) -> tuple[float, float] | None:
    """The candidate's expected share of the candidate + baseline assignments in a window.

    ``(lo, hi)``: the share the weights in force give, widened towards the
    previous step's share (``previous_weight`` percent for the candidate, the
    baseline giving or taking the difference) by the part of the window,
    ``grace_s`` of ``elapsed_s``, that routers may still have served at the
    previous weights. None when neither arm has weight.
    """
    w_c, w_b = max(weights.get(candidate, 0.0), 0.0), max(weights.get(baseline, 0.0), 0.0)
    both = w_c + w_b
    if both <= 0:
        return None
    share = w_c / both
    if previous_weight is None or elapsed_s <= 0:
        return share, share
    old = min(max(previous_weight / both, 0.0), 1.0)
    f = min(1.0, grace_s / elapsed_s)
    mixed = (1.0 - f) * share + f * old
    return min(share, mixed), max(share, mixed)


def window_srm(candidate_n: int, baseline_n: int, share: tuple[float, float]) -> float:
    """Two-sided p-value of the candidate's ``candidate_n`` of ``candidate_n + baseline_n``
    assignments against an expected share in ``[lo, hi]``: 1 inside, else Pearson's
    chi-square (one degree of freedom) against the nearer end; 0 when that end is 0 or 1
    (a count the weights make impossible)."""
    n = candidate_n + baseline_n
    if n <= 0:
        return 1.0
    lo, hi = share
    observed = candidate_n / n
    if lo - 1e-12 <= observed <= hi + 1e-12:
        return 1.0
    end = lo if observed < lo else hi
    if end <= 0.0 or end >= 1.0:
        return 0.0
    z = (candidate_n - n * end) / math.sqrt(n * end * (1.0 - end))
    return math.erfc(abs(z) / math.sqrt(2.0))


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.2f} pp"


def check_gates(
    gates: GateConfig,
    candidate: ArmMetrics,
    baseline: ArmMetrics,
    shadow: ShadowStats | None = None,
    *,
    labels: tuple[tuple[int, int], tuple[int, int]] | None = None,
    share: tuple[float, float] | None = None,
    share_why: str = "the experiment's weights were not passed to evaluate",
    kind: str = MULTICLASS,
    errors: tuple[ErrorMoments, ErrorMoments] | None = None,
    drift: Mapping[str, Any] | None = None,
) -> tuple[tuple[GateResult, ...], Metrics]:
    """Judge one window: a result per enabled gate, and the numbers that decided.

    ``labels``: ((correct, total) of the candidate, of the baseline) for the
    sequential accuracy gate, every label since the canary started; without
    it, the window's. ``share``: the candidate's expected share for the SRM
    gate (``expected_share``); without it that gate is skipped, saying
    ``share_why``. ``kind``: the model's output kind; for a regression model the label
    gates are not judged and ``errors`` (the candidate's and the baseline's since the
    canary started) feed ``error_noninferiority``.
    """
    if kind == REGRESSION:
        gates = replace(gates, accuracy_margin=None, min_accuracy_delta=None,
                        max_label_shift=None)
    else:
        gates = replace(gates, mae_margin=None)
    c_err, b_err = candidate.error_rate, baseline.error_rate
    c_p99, b_p99 = candidate.latency.quantile(0.99), baseline.latency.quantile(0.99)
    c_acc, b_acc = candidate.accuracy, baseline.accuracy
    p99_ratio = c_p99 / b_p99 if c_p99 is not None and b_p99 else None
    acc_ready = (
        candidate.feedback_total >= gates.min_feedback
        and baseline.feedback_total >= gates.min_feedback
    )
    acc_delta = c_acc - b_acc if acc_ready and c_acc is not None and b_acc is not None else None
    shadow_ready = shadow is not None and shadow.compared >= gates.min_shadow_samples
    agreement = shadow.agreement_rate if shadow is not None else None
    if labels is None:
        labels = ((candidate.feedback_correct, candidate.feedback_total),
                  (baseline.feedback_correct, baseline.feedback_total))
    (cl_ok, cl_n), (bl_ok, bl_n) = labels
    metrics: Metrics = {
        "candidate_requests": candidate.requests,
        "baseline_requests": baseline.requests,
        "candidate_error_rate": c_err,
        "baseline_error_rate": b_err,
        "candidate_fallback_rate": candidate.fallback_rate,
        "baseline_fallback_rate": baseline.fallback_rate,
        "candidate_p99_ms": c_p99,
        "baseline_p99_ms": b_p99,
        "p99_ratio": p99_ratio,
        "shadow_compared": shadow.compared if shadow is not None else None,
        "shadow_agreement": agreement,
        "candidate_feedback": candidate.feedback_total,
        "baseline_feedback": baseline.feedback_total,
        "candidate_accuracy": c_acc,
        "baseline_accuracy": b_acc,
        "accuracy_delta": (c_acc - b_acc) if c_acc is not None and b_acc is not None else None,
        "candidate_labels_total": cl_n,
        "baseline_labels_total": bl_n,
        "candidate_assigned": candidate.assigned,
        "baseline_assigned": baseline.assigned,
    }
    results: list[GateResult] = []

    def judge(name: str, ok: bool | None, detail: str, brief: str = "") -> None:
        status = "skip" if ok is None else "pass" if ok else "fail"
        results.append(GateResult(name, status, f"{name}: {status}, {detail}",
                                  f"{name} {status}" + (f" ({brief})" if brief else "")))

    if gates.max_error_rate is not None:
        ok = None if c_err is None else c_err <= gates.max_error_rate
        judge(
            "error_rate",
            ok,
            f"candidate {_fmt(c_err)} ({candidate.errors}/"
            f"{candidate.requests}) vs max {gates.max_error_rate:.4f}",
        )
    if gates.max_error_rate_delta is not None:
        delta = c_err - b_err if c_err is not None and b_err is not None else None
        ok = None if delta is None else delta <= gates.max_error_rate_delta
        judge(
            "error_rate_delta",
            ok,
            f"candidate {_fmt(c_err)} - baseline {_fmt(b_err)} = "
            f"{_fmt(delta)} vs max {gates.max_error_rate_delta:.4f}"
            + (" (no baseline traffic)" if b_err is None else ""),
        )
    if gates.max_fallback_rate is not None:
        fb = candidate.fallback_rate
        ok = None if fb is None else fb <= gates.max_fallback_rate
        judge(
            "fallback_rate",
            ok,
            f"candidate {_fmt(fb)} ({candidate.fallbacks}/"
            f"{candidate.requests}) vs max {gates.max_fallback_rate:.4f}",
        )
    if gates.max_p99_ms is not None:
        ok = None if c_p99 is None else c_p99 <= gates.max_p99_ms
        judge(
            "p99_ms", ok, f"candidate p99 {_fmt(c_p99, '.1f')} ms vs max {gates.max_p99_ms:.1f} ms"
        )
    if gates.max_p99_ratio is not None:
        ok = None if p99_ratio is None else p99_ratio <= gates.max_p99_ratio
        judge(
            "p99_ratio",
            ok,
            f"candidate p99 {_fmt(c_p99, '.1f')} ms / baseline p99 "
            f"{_fmt(b_p99, '.1f')} ms = {_fmt(p99_ratio, '.2f')} vs max "
            f"{gates.max_p99_ratio:.2f}",
        )
    if gates.min_shadow_agreement is not None:
        compared = shadow.compared if shadow is not None else 0
        ok = None
        if shadow_ready and agreement is not None:
            ok = agreement >= gates.min_shadow_agreement
        judge(
            "shadow_agreement",
            ok,
            f"{_fmt(agreement)} over {compared} rows vs min "
            f"{gates.min_shadow_agreement:.4f} (needs {gates.min_shadow_samples} rows)"
            + ("" if shadow_ready else "; lacks data"),
            f"{_fmt(agreement)} over {compared} rows vs min {gates.min_shadow_agreement:.4f}"
            if shadow_ready else f"lacks data: {compared} of {gates.min_shadow_samples} rows",
        )
    if gates.min_accuracy_delta is not None:
        ok = None if acc_delta is None else acc_delta >= gates.min_accuracy_delta
        judge(
            "accuracy_delta",
            ok,
            f"candidate {_fmt(c_acc)} (n={candidate.feedback_total}) - "
            f"baseline {_fmt(b_acc)} (n={baseline.feedback_total}) = {_fmt(acc_delta)} vs min "
            f"{gates.min_accuracy_delta:+.4f} (needs n >= {gates.min_feedback} each)"
            + ("" if acc_ready else "; lacks data"),
            f"{_fmt(acc_delta)} vs min {gates.min_accuracy_delta:+.4f}" if acc_ready
            else f"lacks data: {candidate.feedback_total} and {baseline.feedback_total} labels "
                 f"in the window, needs {gates.min_feedback} each",
        )
    if gates.accuracy_margin is not None:
        margin = gates.accuracy_margin
        metrics["accuracy_margin"] = margin
        if min(cl_n, bl_n) < gates.min_feedback:
            metrics.update(accuracy_ci_lo=None, accuracy_ci_hi=None)
            lack = (f"lacks data: {cl_n} candidate and {bl_n} baseline labels since the "
                    f"canary started, needs {gates.min_feedback} each")
            judge("accuracy_noninferiority", None, lack, lack)
        else:
            seq = msprt_difference(cl_ok, cl_n, bl_ok, bl_n, alpha=gates.accuracy_alpha,
                                   tau=max(margin, DEFAULT_TAU / 2) if margin else DEFAULT_TAU)
            lo, hi = seq.ci
            metrics.update(accuracy_ci_lo=lo, accuracy_ci_hi=hi,
                           accuracy_delta_total=seq.delta, accuracy_seq_p_value=seq.p_value)
            outcome = noninferiority(seq, margin)
            conf = f"{(1 - gates.accuracy_alpha) * 100:g} %"
            numbers = (f"{_pp(seq.delta)} over {cl_n} and {bl_n} labels, always-valid {conf} "
                       f"interval {_pp(lo)} to {_pp(hi)} vs margin {_pp(-margin)}")
            word = {"pass": "not worse by the margin (interval above it)",
                    "fail": "worse by more than the margin (interval below it)",
                    "inconclusive": "inconclusive (interval straddles the margin): neither "
                                    "passes nor fails"}[outcome]
            judge("accuracy_noninferiority",
                  {"pass": True, "fail": False}.get(outcome),
                  f"candidate {cl_ok / cl_n:.4f} - baseline {bl_ok / bl_n:.4f} = {numbers}: "
                  f"{word}",
                  numbers + ("; inconclusive" if outcome == "inconclusive" else ""))
    if gates.mae_margin is not None:
        c_e, b_e = errors if errors is not None else (ErrorMoments(), ErrorMoments())
        mae_seq = mae_comparison(c_e, b_e, alpha=gates.accuracy_alpha)
        if min(c_e.n, b_e.n) < gates.min_feedback or mae_seq is None or b_e.mae is None:
            metrics.update(mae_ci_lo=None, mae_ci_hi=None)
            lack = (f"lacks data: {c_e.n} candidate and {b_e.n} baseline true values since "
                    f"the canary started, needs {gates.min_feedback} each")
            judge("error_noninferiority", None, lack, lack)
        else:
            margin = gates.mae_margin * b_e.mae
            lo, hi = mae_seq.ci
            metrics.update(mae_ci_lo=lo, mae_ci_hi=hi, mae_delta_total=mae_seq.delta,
                           mae_seq_p_value=mae_seq.p_value, mae_margin_abs=margin,
                           candidate_mae=c_e.mae, baseline_mae=b_e.mae)
            outcome = mae_noninferiority(mae_seq, margin)
            conf = f"{(1 - gates.accuracy_alpha) * 100:g} %"
            numbers = (f"MAE {mae_seq.delta:+.4g} over {c_e.n} and {b_e.n} true values, "
                       f"always-valid {conf} interval {lo:+.4g} to {hi:+.4g} vs margin "
                       f"+{margin:.4g} ({gates.mae_margin * 100:g} % of the baseline's)")
            word = {"pass": "not worse by the margin (interval below it)",
                    "fail": "worse by more than the margin (interval above it)",
                    "inconclusive": "inconclusive (interval straddles the margin): neither "
                                    "passes nor fails"}[outcome]
            judge("error_noninferiority",
                  {"pass": True, "fail": False}.get(outcome),
                  f"candidate MAE {c_e.mae:.4g} - baseline {b_e.mae:.4g} = {numbers}: {word}",
                  numbers + ("; inconclusive" if outcome == "inconclusive" else ""))
    if gates.max_disagreement is not None:
        n, d = candidate.compared, candidate.disagreed
        limit = gates.max_disagreement
        if n < gates.min_compared:
            lack = (f"lacks data: {n} of {gates.min_compared} rows compared with the baseline "
                    "in the window (experiment.compare_percent)")
            judge("disagreement", None, lack, lack)
        else:
            lo, hi = wilson_interval(d, n, 0.95)
            metrics.update(disagreement=d / n, disagreement_lo=lo, disagreement_hi=hi)
            numbers = (f"{d / n * 100:.1f} % of {n} rows (95 % interval {lo * 100:.1f} to "
                       f"{hi * 100:.1f} %) vs max {limit * 100:g} %")
            judge("disagreement", lo <= limit,
                  f"the baseline labels {numbers}"
                  + ("" if lo <= limit else ": the candidate answers otherwise than the baseline"),
                  numbers)
    if gates.max_label_shift is not None:
        shift = label_shift(candidate.labels, baseline.labels)
        c_rows, b_rows = sum(candidate.labels.values()), sum(baseline.labels.values())
        if min(c_rows, b_rows) < gates.min_compared or shift is None:
            lack = (f"lacks data: {c_rows} candidate and {b_rows} baseline answers in the "
                    f"window, needs {gates.min_compared} each")
            judge("label_shift", None, lack, lack)
        else:
            tvd, p = shift
            metrics.update(label_shift=tvd, label_shift_p_value=p)
            real = p < gates.label_shift_alpha
            ok = not (real and tvd > gates.max_label_shift)
            numbers = (f"distance {tvd:.3f} vs max {gates.max_label_shift:g}, chi-square p "
                       f"{fmt_p(p)} vs alpha {gates.label_shift_alpha:g}")
            judge("label_shift", ok,
                  f"predicted labels, candidate ({c_rows}) vs baseline ({b_rows}): {numbers}"
                  + ("" if ok else ": the candidate predicts other classes"),
                  numbers)
    if gates.srm_alpha is not None:
        x, y = candidate.assigned, baseline.assigned
        if share is None:
            lack = f"lacks data: {share_why}"
            judge("srm", None, lack, lack)
        elif x + y == 0:
            lack = ("lacks data: no assignment counts in the window (routers that count "
                    "requests but not assignments apart from pins)")
            judge("srm", None, lack, lack)
        else:
            p = window_srm(x, y, share)
            lo, hi = share
            metrics.update(srm_p_value=p, srm_expected_lo=lo, srm_expected_hi=hi)
            expected = f"{lo * 100:.2f} %" if hi - lo < 1e-9 else \
                f"{lo * 100:.2f} % to {hi * 100:.2f} %"
            numbers = (f"candidate {x} of {x + y} assignments = {x / (x + y) * 100:.2f} % vs "
                       f"expected {expected}, p {fmt_p(p)} vs min {gates.srm_alpha:g}")
            judge("srm", p >= gates.srm_alpha,
                  numbers + ("" if p >= gates.srm_alpha else ": sample-ratio mismatch"),
                  f"p {fmt_p(p)}")
    if gates.max_latency_shift is not None:
        c_n, b_n = candidate.latency.count, baseline.latency.count
        if min(c_n, b_n) < MIN_LATENCY_SAMPLES:
            lack = (f"lacks data: {c_n} candidate and {b_n} baseline latencies in the window, "
                    f"needs {MIN_LATENCY_SAMPLES} each")
            judge("latency_shift", None, lack, lack)
        else:
            lat = compare_latency(candidate.latency, baseline.latency)
            assert lat is not None
            metrics.update(latency_p_slower=lat.p_slower, latency_shift_ratio=lat.shift_ratio,
                           latency_prob_slower=lat.prob_slower)
            slower = lat.p_slower < gates.latency_alpha
            ok = not (slower and lat.shift_ratio > gates.max_latency_shift)
            numbers = (f"x{lat.shift_ratio:.2f} (Hodges-Lehmann), Mann-Whitney one-sided "
                       f"p {fmt_p(lat.p_slower)} vs alpha {gates.latency_alpha:g}, max "
                       f"x{gates.max_latency_shift:.2f}")
            judge("latency_shift", ok,
                  f"candidate latency typically {numbers}, P(slower) {lat.prob_slower:.3f}",
                  numbers)
    if gates.drift:
        status = (drift or {}).get("status")
        if status not in ("ok", "alert"):
            lack = f"lacks data: the candidate's drift window is {status or 'not reported'}"
            judge("drift", None, lack, lack)
        else:
            assert drift is not None
            alerts = list(drift.get("alerts", ()))
            metrics.update(drift_max_psi=drift.get("max_psi"), drift_max_ks=drift.get("max_ks"),
                           drift_alerts=len(alerts))
            numbers = ", ".join(f"{a['statistic']} {a['channel']} {a['value']:.3g} > "
                                f"{a['threshold']:g}" for a in alerts) or (
                f"max PSI {drift.get('max_psi', 0):.3g}, max KS {drift.get('max_ks', 0):.3g} "
                "within the thresholds")
            judge("drift", not alerts, f"candidate's inputs and labels over "
                  f"{drift.get('rows')} rows: {numbers}", numbers)
    return tuple(results), metrics


def _quality_line(results: tuple[GateResult, ...], kind: str = MULTICLASS) -> str:
    by_name = {r.name: r for r in results}
    names = [n for n in QUALITY_GATES
             if (n not in LABEL_GATES if kind == REGRESSION else n != "error_noninferiority")]
    parts = [by_name[n].brief if n in by_name else f"{n} off" for n in names]
    return "quality gates: " + "; ".join(parts)


def evaluate(
    plan: CanaryPlan,
    state: CanaryState,
    candidate: ArmMetrics,
    baseline: ArmMetrics,
    now: float,
    *,
    shadow: ShadowStats | None = None,
    weights: Mapping[str, float] | None = None,
    kind: str = MULTICLASS,
    errors: tuple[ErrorMoments, ErrorMoments] | None = None,
    drift: Mapping[str, Any] | None = None,
) -> tuple[CanaryState, Decision]:
    """Judge the current step's window and move the plan on; see the module docstring.

    ``candidate``, ``baseline`` and ``shadow`` hold the current window only.
    ``weights``: the experiment's weights in force during the window (for the
    sample-ratio gate, which is skipped without them).
    """
    _check_plan(plan, state)
    step, weight = state.step, state.weight
    if state.status is not CanaryStatus.RUNNING:
        return state, Decision(
            now,
            Action.HOLD,
            Verdict.WAIT,
            step,
            weight,
            weight,
            (f"canary is {state.status}; nothing to evaluate",),
        )
    started = state.step_started_at if state.step_started_at is not None else now
    elapsed = now - started
    waits: list[str] = []
    if elapsed < plan.interval_s:
        waits.append(f"interval: {elapsed:.0f} s of {plan.interval_s:g} s elapsed")
    if candidate.requests < plan.min_requests:
        waits.append(f"requests: {candidate.requests} of {plan.min_requests} candidate requests")
    if waits:
        wait_metrics: Metrics = {"elapsed_s": elapsed, "candidate_requests": candidate.requests}
        return state, Decision(
            now, Action.HOLD, Verdict.WAIT, step, weight, weight, tuple(waits), wait_metrics
        )

    labels = (
        (state.candidate_labels[0] + candidate.feedback_correct,
         state.candidate_labels[1] + candidate.feedback_total),
        (state.baseline_labels[0] + baseline.feedback_correct,
         state.baseline_labels[1] + baseline.feedback_total),
    )
    share = None
    if weights is not None:
        previous = state.history[-1].weight if state.history else None
        share = expected_share(weights, plan.candidate, plan.baseline, previous, elapsed,
                               plan.gates.srm_grace_s)
    results, metrics = check_gates(
        plan.gates, candidate, baseline, shadow, labels=labels, share=share,
        share_why="the experiment's weights were not passed to evaluate" if weights is None
        else "neither arm has weight", kind=kind, errors=errors, drift=drift,
    )
    metrics["elapsed_s"] = elapsed
    reasons = [r.message for r in results]
    failed = [r.name for r in results if r.status == "fail"]
    where = f"step {step + 1}/{len(plan.steps)} ({weight:g}%)"
    window = state.window + 1
    quality = _quality_line(results, kind)

    def decide(
        action: Action, verdict: Verdict, to_weight: float, reason: str, **changes: Any
    ) -> tuple[CanaryState, Decision]:
        reasons.append(f"{reason}; {quality}")
        d = Decision(now, action, verdict, step, weight, to_weight, tuple(reasons), metrics)
        new = _record(state, d, step_started_at=now, window=window,
                      candidate_labels=labels[0], baseline_labels=labels[1], **changes)
        return new, d

    if failed:
        n = state.consecutive_failures + 1
        limit = plan.gates.failures_to_rollback
        if n >= limit:
            return decide(
                Action.ROLLBACK, Verdict.FAIL, 0.0,
                f"rollback at {where}: {n} consecutive failed windows "
                f"(limit {limit}); failed: {', '.join(failed)}",
                status=CanaryStatus.ROLLED_BACK, weight=0.0, consecutive_failures=n,
            )
        return decide(
            Action.HOLD, Verdict.FAIL, weight,
            f"hold at {where}: failed window {n} of {limit} before rollback "
            f"({', '.join(failed)}); a new window starts",
            consecutive_failures=n,
        )
    answer_gates = [r for r in results if r.name in ANSWER_QUALITY_GATES]
    disagreement = next((r for r in answer_gates if r.name == "disagreement"), None)
    if disagreement is not None and disagreement.status == "skip" and candidate.compared > 0:
        # Comparisons are flowing (experiment.compare_percent > 0): they are the one answer
        # gate every window can feed, and the label distribution alone misses a model that
        # is wrong in every class alike, so the window waits for their minimum.
        hold = (f"hold at {where}: waiting for the disagreement gate's data "
                f"({candidate.compared} of {plan.gates.min_compared} rows compared); "
                f"the window goes on; {quality}")
        return state, Decision(now, Action.HOLD, Verdict.WAIT, step, weight, weight,
                               (*reasons, hold), metrics)
    if answer_gates and all(r.status == "skip" for r in answer_gates):
        # Nothing failed, but nothing has judged the answers yet either: a window closes
        # (and the canary goes on) only once one of them has its data, so a candidate
        # is never advanced or promoted on its error rate and latency alone.
        hold = (f"hold at {where}: no gate on the answers has data yet "
                f"({', '.join(r.name for r in answer_gates)}); the window goes on; {quality}")
        return state, Decision(now, Action.HOLD, Verdict.WAIT, step, weight, weight,
                               (*reasons, hold), metrics)
    if step == len(plan.steps) - 1:
        return decide(
            Action.PROMOTE, Verdict.PASS, 100.0, f"promote: every gate passed at {where}",
            status=CanaryStatus.PROMOTED, weight=100.0, consecutive_failures=0,
        )
    nxt = plan.steps[step + 1]
    return decide(
        Action.ADVANCE, Verdict.PASS, nxt,
        f"advance: every gate passed at {where}; next {nxt:g}%",
        step=step + 1, weight=nxt, consecutive_failures=0,
    )
