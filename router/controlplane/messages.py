"""What a router replica and the controller exchange, as typed values: on each sync, and
the result of each change (``Applied``).

Defined here, below both the service and the client (which re-exports them),
so that the service, a plane, never imports the client, an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.controlplane.experiment import ExperimentState

__all__ = ["Applied", "SyncReply", "SyncReport"]


@dataclass(frozen=True)
class SyncReport:
    """A router replica's cumulative counters and the predictions served since its last report."""

    metrics: dict[str, dict]  # version -> ArmMetrics.to_dict()
    shadows: dict[str, dict]  # version -> ShadowStats.to_dict()
    # (request id, version, what was answered: label index, [label, score] or the values)
    served: list[tuple[str, str, Any]]
    kind: str = "multiclass"  # the model's output kind (models/kinds.py): what the report shows
    # version -> the inputs and answers binned since the last report, with the edges of the
    # version's reference (router/controlplane/drift.py DriftBuffer): rows, channels, answers
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncReply:
    """The experiment's revision now, and the feedback counts the bandit policy uses."""

    revision: int
    bandit_successes: dict[str, int]
    bandit_failures: dict[str, int]
    # version -> its drift in a word or two ("ok", "alert psi ch3=0.31", "no reference",
    # "warming up"): what /stats and `abserve status` show without an admin call
    drift: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """An accepted change: the new state, and the sticky users it moved beyond the promise
    of router/dataplane/policy.py (its audit entry's ``reassigned``; None when it kept it)."""

    state: ExperimentState
    reassigned: dict[str, Any] | None = None
