"""The live experiment: its state, the operations on it, and the audit entry.

Pure Python, no Ray. Every operation returns a *new* ``ExperimentConfig``
and is validated by the same pydantic rules as the config file (weights sum
to 100, the baseline is an arm, no unknown or duplicate versions), plus the
rule that every arm is a deployed version. A refused operation raises
``InvalidInput`` (422) and changes nothing; an accepted one bumps the
revision. The controller (``router/controlplane/controller.py``) applies them one at a time
and persists the result; routers poll the revision and swap in the new arms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from serve.config import ExperimentConfig, format_validation_errors
from serve.errors import InvalidInput, NotFound

__all__ = ["OPERATIONS", "ExperimentState", "apply_operation", "effective_weights"]


@dataclass(frozen=True)
class ExperimentState:
    experiment: ExperimentConfig
    revision: int = 1
    paused: bool = False
    updated_at: float = 0.0
    updated_by: str = "config"

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.model_dump(mode="json"),
            "revision": self.revision,
            "paused": self.paused,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentState:
        return cls(
            experiment=ExperimentConfig.model_validate(data["experiment"]),
            revision=int(data["revision"]),
            paused=bool(data.get("paused", False)),
            updated_at=float(data.get("updated_at", 0.0)),
            updated_by=str(data.get("updated_by", "config")),
        )

    def weights(self) -> dict[str, float]:
        return {a.version: a.weight for a in self.experiment.arms}


def effective_weights(state: ExperimentState) -> dict[str, float]:
    """What routers use: the stored weights, or all traffic to the baseline while paused."""
    if not state.paused:
        return state.weights()
    return {v: (100.0 if v == state.experiment.baseline else 0.0) for v in state.weights()}


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


def op_set_weights(
    exp: ExperimentConfig, deployed: Collection[str], weights: Any = None
) -> ExperimentConfig:
    """Replace the weights of the listed arms; arms not listed keep theirs."""
    if not isinstance(weights, dict) or not weights:
        raise InvalidInput("weights: expected an object {version: percent}", field="weights")
    arms = _arm_dicts(exp)
    known = {a["version"] for a in arms}
    for version, value in weights.items():
        if version not in known:
            raise InvalidInput(
                f"weights.{version}: not an arm; add it first (add-candidate)", field="weights"
            )
        _number(value, f"weights.{version}")
    for arm in arms:
        if arm["version"] in weights:
            arm["weight"] = float(weights[arm["version"]])
    return _rebuild(exp, deployed, arms=arms)


def op_add_candidate(
    exp: ExperimentConfig, deployed: Collection[str], version: Any = None, weight: Any = 0
) -> ExperimentConfig:
    """Add a deployed version as an arm; its weight comes out of the baseline's."""
    if not isinstance(version, str) or not version:
        raise InvalidInput("version: expected a version name", field="version")
    if version in {a.version for a in exp.arms}:
        raise InvalidInput(f"version {version!r} is already an arm", field="version")
    w = _number(weight, "weight")
    arms = _arm_dicts(exp)
    for arm in arms:
        if arm["version"] == exp.baseline:
            arm["weight"] -= w
    arms.append({"version": version, "weight": w})
    return _rebuild(exp, deployed, arms=arms)


def op_remove_arm(
    exp: ExperimentConfig, deployed: Collection[str], version: Any = None
) -> ExperimentConfig:
    """Remove a candidate; its weight goes back to the baseline."""
    version = _require_arm(exp, version)
    if version == exp.baseline:
        raise InvalidInput("cannot remove the baseline; promote another version first",
                           field="version")
    removed = next(a.weight for a in exp.arms if a.version == version)
    arms = [a for a in _arm_dicts(exp) if a["version"] != version]
    for arm in arms:
        if arm["version"] == exp.baseline:
            arm["weight"] += removed
    return _rebuild(exp, deployed, arms=arms)


def op_promote(
    exp: ExperimentConfig, deployed: Collection[str], version: Any = None
) -> ExperimentConfig:
    """The candidate becomes the baseline and takes the old baseline's traffic.

    The old baseline stays an arm at weight 0, so a rollback is one call away.
    """
    version = _require_arm(exp, version)
    if version == exp.baseline:
        raise InvalidInput(f"{version!r} is already the baseline", field="version")
    arms = _arm_dicts(exp)
    old = next(a for a in arms if a["version"] == exp.baseline)
    new = next(a for a in arms if a["version"] == version)
    new["weight"] += old["weight"]
    old["weight"] = 0.0
    return _rebuild(exp, deployed, arms=arms, baseline=version)


def op_rollback(
    exp: ExperimentConfig, deployed: Collection[str], version: Any = None
) -> ExperimentConfig:
    """A candidate's weight to 0 at once (all candidates if no version is named)."""
    targets = (
        {a.version for a in exp.arms if a.version != exp.baseline}
        if version is None
        else {_require_arm(exp, version)}
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


def op_set_shadows(
    exp: ExperimentConfig, deployed: Collection[str], shadows: Any = None
) -> ExperimentConfig:
    """Replace the shadow list: [{"version": "v3", "share": 0.2}, ...] ([] turns shadows off)."""
    if not isinstance(shadows, list):
        raise InvalidInput("shadows: expected a list of {version, share}", field="shadows")
    for i, s in enumerate(shadows):
        if not isinstance(s, dict) or s.get("version") not in deployed:
            raise InvalidInput(
                f"shadows.{i}: version must be one of the deployed {sorted(deployed)}",
                field="shadows",
            )
    return _rebuild(exp, deployed, shadows=shadows)


Operation = Callable[..., ExperimentConfig]

OPERATIONS: dict[str, Operation] = {
    "set_weights": op_set_weights,
    "add_candidate": op_add_candidate,
    "remove_arm": op_remove_arm,
    "promote": op_promote,
    "rollback": op_rollback,
    "set_shadows": op_set_shadows,
}
FLAG_OPERATIONS = {"pause": True, "resume": False}


def apply_operation(
    state: ExperimentState,
    op: str,
    params: Mapping[str, Any],
    *,
    deployed: Collection[str],
    who: str,
    clock: Callable[[], float] = time.time,
) -> tuple[ExperimentState, dict[str, Any]]:
    """Apply one named operation; return the new state and its audit entry."""
    if op in FLAG_OPERATIONS:
        if params:
            raise InvalidInput(f"{op} takes no parameters", field=next(iter(params)))
        new_exp, paused = state.experiment, FLAG_OPERATIONS[op]
    elif op in OPERATIONS:
        try:
            new_exp = OPERATIONS[op](state.experiment, deployed, **params)
        except TypeError:
            raise InvalidInput(f"{op}: unexpected parameters {sorted(params)}") from None
        paused = state.paused
    else:
        known = sorted([*OPERATIONS, *FLAG_OPERATIONS])
        raise NotFound(f"unknown operation {op!r}; one of {known}")
    now = clock()
    new = replace(
        state,
        experiment=new_exp,
        paused=paused,
        revision=state.revision + 1,
        updated_at=now,
        updated_by=who,
    )
    entry = {
        "time": now,
        "who": who,
        "operation": op,
        "params": dict(params),
        "revision": new.revision,
        "before": {"weights": state.weights(), "baseline": state.experiment.baseline,
                   "paused": state.paused},
        "after": {"weights": new.weights(), "baseline": new.experiment.baseline,
                  "paused": new.paused},
    }
    return new, entry
