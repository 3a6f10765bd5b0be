"""Operations on the live experiment as typed values, and how each one applies.

An operation used to travel as a string and a dict of parameters, so a
misspelt name failed only when it ran. Here each one is a frozen dataclass:
the HTTP admin routes, the canary's rollout and the controller build, pass
and pickle the same values, and ``apply_operation`` dispatches on the type.

Fields are ``Any`` on purpose: they come from JSON bodies and are validated
when the operation is applied, by the same pydantic rules as the config file
(weights sum to 100, the baseline is an arm, no unknown or duplicate
versions) plus the rule that every arm is a deployed version. A refused
operation raises ``InvalidInput`` (422) or ``NotFound`` (404) and changes
nothing; an accepted one returns a new ``ExperimentConfig`` and bumps the
revision. ``kind`` is the operation's name in the audit log. A change that moves
sticky users beyond the promise of ``router/dataplane/policy.py`` is applied, and
its audit entry says how many (``reassigned``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import ValidationError

from router.controlplane.experiment import ExperimentState
from router.dataplane.policy import Arm, reassignment
from serve.config import ExperimentConfig, format_validation_errors
from serve.errors import InvalidInput, NotFound

__all__ = [
    "OPERATION_TYPES",
    "AddCandidate",
    "Operation",
    "Pause",
    "Promote",
    "RemoveArm",
    "Resume",
    "Rollback",
    "SetShadows",
    "SetWeights",
    "apply_operation",
    "audit_entry",
    "from_params",
    "reassigned",
]


# ------------------------------------------------------------------ validation helpers


def _rebuild(
    exp: ExperimentConfig, deployed: Collection[str], **changes: Any
) -> ExperimentConfig:
    data = exp.model_dump(mode="json")
    data.update(changes)
    try:
        new = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(format_validation_errors(exc)) from None
    unknown = sorted({a.version for a in new.arms} - set(deployed))
    if unknown:
        raise InvalidInput(
            f"arms: version(s) {unknown} are not deployed; deployed: {sorted(deployed)}; "
            "deploy them first (abserve deploy-version)",
            field="arms",
        )
    return new


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{name}: expected a finite number, got {value!r}", field=name)
    if value < 0:
        raise InvalidInput(f"{name}: weights cannot be negative ({value})", field=name)
    return float(value)


def _arm_dicts(exp: ExperimentConfig) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in exp.arms]


def _require_arm(exp: ExperimentConfig, version: Any) -> str:
    if not isinstance(version, str) or version not in {a.version for a in exp.arms}:
        raise NotFound(f"version {version!r} is not an arm of the experiment", field="version")
    return version


class _Op:
    """What every operation has: its audit name, its audit params, its effect."""

    kind: ClassVar[str]

    def __init_subclass__(cls, *, kind: str, **rest: Any) -> None:
        super().__init_subclass__(**rest)
        cls.kind = kind

    def params(self) -> dict[str, Any]:
        """The audit entry's params: the fields that were given (None means not given)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) is not None
        }

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        return exp


# ------------------------------------------------------------------ the operations


@dataclass(frozen=True)
class SetWeights(_Op, kind="set_weights"):
    """Replace the weights of the listed arms; arms not listed keep theirs."""

    weights: Any

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        weights = self.weights
        if not isinstance(weights, dict) or not weights:
            raise InvalidInput("weights: expected an object {version: percent}", field="weights")
        arms = _arm_dicts(exp)
        known = {a["version"] for a in arms}
        for version, value in weights.items():
            if version not in known:
                raise InvalidInput(
                    f"weights.{version}: not an arm; add it first (add-candidate)",
                    field="weights",
                )
            _number(value, f"weights.{version}")
        for arm in arms:
            if arm["version"] in weights:
                arm["weight"] = float(weights[arm["version"]])
        return _rebuild(exp, deployed, arms=arms)


@dataclass(frozen=True)
class SetShadows(_Op, kind="set_shadows"):
    """Replace the shadow list: [{"version": "v3", "percent": 20}, ...] ([] turns shadows off)."""

    shadows: Any

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        if not isinstance(self.shadows, list):
            raise InvalidInput("shadows: expected a list of {version, percent}", field="shadows")
        for i, s in enumerate(self.shadows):
            version = s.get("version") if isinstance(s, dict) else None
            if not isinstance(version, str) or version not in deployed:
                raise InvalidInput(
                    f"shadows.{i}: version must be one of the deployed {sorted(deployed)}",
                    field="shadows",
                )
        return _rebuild(exp, deployed, shadows=self.shadows)


@dataclass(frozen=True)
class AddCandidate(_Op, kind="add_candidate"):
    """Add a deployed version as an arm; its weight comes out of the baseline's."""

    version: Any
    weight: Any = 0

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        version = self.version
        if not isinstance(version, str) or not version:
            raise InvalidInput("version: expected a version name", field="version")
        if version in {a.version for a in exp.arms}:
            raise InvalidInput(f"version {version!r} is already an arm", field="version")
        w = _number(self.weight, "weight")
        arms = _arm_dicts(exp)
        for arm in arms:
            if arm["version"] == exp.baseline:
                arm["weight"] -= w
        arms.append({"version": version, "weight": w})
        return _rebuild(exp, deployed, arms=arms)


@dataclass(frozen=True)
class RemoveArm(_Op, kind="remove_arm"):
    """Remove a candidate; its weight goes back to the baseline."""

    version: Any

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        version = _require_arm(exp, self.version)
        if version == exp.baseline:
            raise InvalidInput("cannot remove the baseline; promote another version first",
                               field="version")
        removed = next(a.weight for a in exp.arms if a.version == version)
        arms = [a for a in _arm_dicts(exp) if a["version"] != version]
        for arm in arms:
            if arm["version"] == exp.baseline:
                arm["weight"] += removed
        return _rebuild(exp, deployed, arms=arms)


@dataclass(frozen=True)
class Promote(_Op, kind="promote"):
    """The candidate becomes the baseline and takes the old baseline's traffic.

    The old baseline stays an arm at weight 0, so a rollback is one call away.
    """

    version: Any

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        version = _require_arm(exp, self.version)
        if version == exp.baseline:
            raise InvalidInput(f"{version!r} is already the baseline", field="version")
        arms = _arm_dicts(exp)
        old = next(a for a in arms if a["version"] == exp.baseline)
        new = next(a for a in arms if a["version"] == version)
        new["weight"] += old["weight"]
        old["weight"] = 0.0
        return _rebuild(exp, deployed, arms=arms, baseline=version)


@dataclass(frozen=True)
class Rollback(_Op, kind="rollback"):
    """A candidate's weight to 0 at once (all candidates if no version is named)."""

    version: Any = None

    def apply(self, exp: ExperimentConfig, deployed: Collection[str]) -> ExperimentConfig:
        targets = (
            {a.version for a in exp.arms if a.version != exp.baseline}
            if self.version is None
            else {_require_arm(exp, self.version)}
        )
        if exp.baseline in targets:
            raise InvalidInput("cannot roll back the baseline; promote another version",
                               field="version")
        arms = _arm_dicts(exp)
        freed = sum(a["weight"] for a in arms if a["version"] in targets)
        for arm in arms:
            if arm["version"] in targets:
                arm["weight"] = 0.0
            elif arm["version"] == exp.baseline:
                arm["weight"] += freed
        return _rebuild(exp, deployed, arms=arms)


@dataclass(frozen=True)
class Pause(_Op, kind="pause"):
    """All traffic to the baseline; the weights are kept for resume."""



@dataclass(frozen=True)
class Resume(_Op, kind="resume"):
    """Back to the stored weights."""



Operation = SetWeights | SetShadows | AddCandidate | RemoveArm | Promote | Rollback | Pause | Resume
OPERATION_TYPES: tuple[type[Operation], ...] = (
    SetWeights, SetShadows, AddCandidate, RemoveArm, Promote, Rollback, Pause, Resume,
)


def from_params(cls: type[Operation], params: Mapping[str, Any]) -> Operation:
    """Build an operation from a JSON body; a field not given is None (or its default).

    Unknown keys are refused, so a misspelt parameter is a 422, not ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(params) - set(fields)
    if unknown and not fields:
        raise InvalidInput(f"{cls.kind} takes no parameters", field=sorted(unknown)[0])
    if unknown:
        raise InvalidInput(f"{cls.kind}: unexpected parameters {sorted(params)}")
    values = {
        name: params.get(name, None if f.default is dataclasses.MISSING else f.default)
        for name, f in fields.items()
    }
    return cls(**values)


def _summary(state: ExperimentState) -> dict[str, Any]:
    return {"weights": state.weights(), "baseline": state.experiment.baseline,
            "paused": state.paused}


def audit_entry(
    time_: float, who: str, kind: str, params: Mapping[str, Any],
    before: ExperimentState | None, after: ExperimentState, **extra: Any,
) -> dict[str, Any]:
    """One line of the audit log: when, who, what, and the weights before and after."""
    return {
        "time": time_,
        "who": who,
        "operation": kind,
        "params": dict(params),
        "revision": after.revision,
        **extra,
        "before": None if before is None else _summary(before),
        "after": _summary(after),
    }


def _sticky_arms(exp: ExperimentConfig) -> tuple[Arm, ...]:
    return tuple(Arm(a.version, a.weight, baseline=a.version == exp.baseline) for a in exp.arms)


def reassigned(before: ExperimentConfig, after: ExperimentConfig) -> dict[str, Any] | None:
    """Sticky users a change moves beyond its promise (docs/experiments.md), or None.

    The stored weights are compared (a change made while paused takes effect at resume).
    """
    if after.policy != "weighted":
        return None  # the bandit ignores user keys
    moved = reassignment(_sticky_arms(before), _sticky_arms(after), after.name)
    if not moved.unpromised:
        return None
    return {"percent_of_users": round(moved.unpromised_share * 100.0, 4),
            "moves": moved.describe()}


def apply_operation(
    state: ExperimentState,
    op: Operation,
    *,
    deployed: Collection[str],
    who: str,
    clock: Callable[[], float] = time.time,
) -> tuple[ExperimentState, dict[str, Any]]:
    """Apply one operation; return the new state and its audit entry."""
    if not isinstance(op, OPERATION_TYPES):
        raise InvalidInput(f"not an experiment operation: {op!r}")
    extra: dict[str, Any] = {}
    if isinstance(op, Pause | Resume):
        new_exp, paused = state.experiment, isinstance(op, Pause)
    else:
        new_exp, paused = op.apply(state.experiment, deployed), state.paused
        moved = reassigned(state.experiment, new_exp)
        if moved is not None:
            extra["reassigned"] = moved
    now = clock()
    new = replace(
        state,
        experiment=new_exp,
        paused=paused,
        revision=state.revision + 1,
        updated_at=now,
        updated_by=who,
        live_changes=state.live_changes + 1,  # an override of the config revision's state
    )
    return new, audit_entry(now, who, op.kind, op.params(), state, new, **extra)
