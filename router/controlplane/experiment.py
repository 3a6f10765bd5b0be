"""The live experiment's state: the arms and weights, the revision, paused or not.

Pure Python, no Ray. A state is immutable: an operation
(``router/controlplane/operations.py``) makes a new one with the next
revision, the service (``router/controlplane/service.py``) persists it, and
routers follow the revision and swap in the new arms. Both the controller and
the routers read it, which is why it lives apart from the operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve.config import ExperimentConfig

__all__ = ["ExperimentState", "effective_weights"]


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
