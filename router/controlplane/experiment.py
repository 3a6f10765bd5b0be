"""The live experiment's state: the arms and weights, the revision, paused or not.

Pure Python, no Ray. A state is immutable: an operation
(``router/controlplane/operations.py``) makes a new one with the next
revision, the service (``router/controlplane/service.py``) persists it, and
routers follow the revision and swap in the new arms. Both the controller and
the routers read it, which is why it lives apart from the operations.

The config file is the desired state (docs/experiments.md, "The config file is the desired
state"): a ``Declaration`` is what a config declares of the live experiment (the
``experiment`` block and the ``canary`` plan), and its digest is the *config revision*. Every
state records the config revision it was made on (``config_revision``) and how many live
changes (admin calls, canary steps) were made on it since (``live_changes``). Deploying a
declaration with another digest replaces the live state; one with the same digest keeps it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve.config import AbserveConfig, CanaryPlanConfig, ExperimentConfig, parse_config

__all__ = ["Declaration", "ExperimentState", "effective_weights", "experiment_diff"]


@dataclass(frozen=True)
class Declaration:
    """What a config file declares of the live experiment: its ``experiment`` block and its
    ``canary`` plan. It reaches the controller as Serve's ``user_config``, so that deploying
    a file that changes only these is a lightweight update (no replica restarts)."""

    experiment: ExperimentConfig
    canary: CanaryPlanConfig | None = None

    @classmethod
    def of(cls, config: AbserveConfig) -> Declaration:
        return cls(config.experiment, config.canary)

    def to_user_config(self) -> dict[str, Any]:
        canary = None if self.canary is None else self.canary.model_dump(mode="json")
        if canary is not None and canary.get("replay") is None:
            del canary["replay"]  # a plan without a replay gate keeps its config revision
        return {"experiment": self.experiment.model_dump(mode="json"), "canary": canary}

    @classmethod
    def from_user_config(cls, data: Any, config: AbserveConfig) -> Declaration:
        """A user_config validated against the rest of ``config`` (the deployed versions),
        with the config file's field-named errors (serve.errors.ConfigError)."""
        if not isinstance(data, Mapping) or set(data) - {"experiment", "canary"}:
            raise ValueError("the controller's user_config is {experiment: ..., canary: ...} "
                             "(abserve serve-config writes it); got "
                             f"{sorted(data) if isinstance(data, Mapping) else type(data)}")
        merged = {**config.model_dump(mode="json", exclude={"experiment", "canary"}),
                  "experiment": data.get("experiment"), "canary": data.get("canary")}
        return cls.of(parse_config(merged))

    @property
    def digest(self) -> str:
        """The config revision: the same declaration, the same digest, wherever it is made."""
        blob = json.dumps(self.to_user_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExperimentState:
    experiment: ExperimentConfig
    revision: int = 1
    paused: bool = False
    updated_at: float = 0.0
    updated_by: str = "config"
    config_revision: str = ""  # the Declaration digest this state was made on ("": unknown)
    live_changes: int = 0  # admin calls and canary steps applied since that config revision

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.model_dump(mode="json"),
            "revision": self.revision,
            "paused": self.paused,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "config_revision": self.config_revision,
            "live_changes": self.live_changes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentState:
        return cls(
            experiment=ExperimentConfig.model_validate(data["experiment"]),
            revision=int(data["revision"]),
            paused=bool(data.get("paused", False)),
            updated_at=float(data.get("updated_at", 0.0)),
            updated_by=str(data.get("updated_by", "config")),
            config_revision=str(data.get("config_revision", "")),
            live_changes=int(data.get("live_changes", 0)),
        )

    def weights(self) -> dict[str, float]:
        return {a.version: a.weight for a in self.experiment.arms}


def effective_weights(state: ExperimentState) -> dict[str, float]:
    """What routers use: the stored weights, or all traffic to the baseline while paused."""
    if not state.paused:
        return state.weights()
    return {v: (100.0 if v == state.experiment.baseline else 0.0) for v in state.weights()}


def _leaves(exp: ExperimentConfig) -> dict[str, Any]:
    """An experiment as dotted fields; arms and shadows keyed by version, not position."""
    data = exp.model_dump(mode="json")
    out: dict[str, Any] = {}
    for arm in data.pop("arms"):
        version = arm.pop("version")
        out.update({f"arms.{version}.{k}": v for k, v in arm.items()})
    for shadow in data.pop("shadows"):
        out[f"shadows.{shadow['version']}.percent"] = shadow["percent"]
    for key, value in data.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def experiment_diff(
    declared: Declaration, live: ExperimentState
) -> list[tuple[str, Any, Any]]:
    """``(field, file, live)`` for every field where the live experiment differs from what
    the file declares (``None``: absent on that side); ``paused`` counts, as a file never
    declares a paused experiment. The canary is compared by the caller (its status)."""
    ours, theirs = _leaves(declared.experiment), _leaves(live.experiment)
    rows = [(k, ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)]
    if live.paused:
        rows.append(("paused", False, True))
    return rows
