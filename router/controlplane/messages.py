"""What a router replica and the controller exchange on each sync, as typed values.

Defined here, below both the service and the client (which re-exports them),
so that the service, a plane, never imports the client, an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyncReply", "SyncReport"]


@dataclass(frozen=True)
class SyncReport:
    """A router replica's cumulative counters and the predictions served since its last report."""

    metrics: dict[str, dict]  # version -> ArmMetrics.to_dict()
    shadows: dict[str, dict]  # version -> ShadowStats.to_dict()
    served: list[tuple[str, str, int]]  # (request id, version, predicted label)


@dataclass(frozen=True)
class SyncReply:
    """The experiment's revision now, and the feedback counts the bandit policy uses."""

    revision: int
    bandit_successes: dict[str, int]
    bandit_failures: dict[str, int]
