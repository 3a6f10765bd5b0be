"""Scale steps of Serve deployments, from snapshots of their replica counts.

Ray Serve 2.60 keeps no history of its autoscaling decisions (its schema has a
``DeploymentAutoscalingDetail.decisions`` field, but the controller never fills
it in), so abserve records one: ``abserve scale-history --watch S`` samples
every deployment's target and live replicas (``replica_counts``, the one
function here that touches Ray) and feeds them to ``ScaleTracker``, a pure
state machine with the sample times injected. A step is *requested* when a new
target is first seen and *finished* when exactly that many replicas run and no
other replica is still starting or stopping. Times are as precise as the
sampling interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = [
    "ReplicaCount", "ScaleStep", "ScaleTracker", "format_step", "replica_counts", "watch",
]


@dataclass(frozen=True)
class ReplicaCount:
    target: int  # Serve's current target (the autoscaler's decision, or num_replicas)
    running: int  # replicas in state RUNNING
    total: int  # replicas in any live state: starting, updating, running, stopping
    nodes: tuple[str, ...] = ()  # node id of every RUNNING replica


@dataclass(frozen=True)
class ScaleStep:
    deployment: str
    from_replicas: int
    to_replicas: int
    requested_at: float  # wall time the new target was first seen
    finished_at: float | None = None
    outcome: Literal["pending", "done", "superseded"] = "pending"

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.requested_at

    @property
    def direction(self) -> str:
        return "up" if self.to_replicas > self.from_replicas else "down"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": self.duration_s, "direction": self.direction}


class ScaleTracker:
    """Turns a series of replica-count snapshots into scale steps."""

    def __init__(self) -> None:
        self.steps: list[ScaleStep] = []
        self._target: dict[str, int] = {}
        self._open: dict[str, int] = {}  # deployment -> index into steps

    def observe(self, now: float, counts: Mapping[str, ReplicaCount]) -> list[ScaleStep]:
        """Record one snapshot; return the steps it requested, finished or superseded."""
        changed: list[ScaleStep] = []
        for name, c in sorted(counts.items()):
            previous = self._target.get(name)
            if previous is None:  # first sight: a step only if it is still converging
                self._target[name] = c.target
                if c.running != c.target or c.total != c.target:
                    changed.append(self._start(name, c.running, c.target, now))
            elif c.target != previous:
                if name in self._open:
                    changed.append(self._close(name, None, "superseded"))
                self._target[name] = c.target
                changed.append(self._start(name, previous, c.target, now))
            if name in self._open and c.running == c.target and c.total == c.target:
                changed.append(self._close(name, now, "done"))
        for name in set(self._target) - set(counts):  # deployment deleted
            self._target.pop(name)
            if name in self._open:
                changed.append(self._close(name, None, "superseded"))
        return changed

    def _start(self, name: str, old: int, new: int, now: float) -> ScaleStep:
        step = ScaleStep(name, old, new, now)
        self._open[name] = len(self.steps)
        self.steps.append(step)
        return step

    def _close(self, name: str, now: float | None, outcome: Literal["done", "superseded"]
               ) -> ScaleStep:
        i = self._open.pop(name)
        self.steps[i] = replace(self.steps[i], finished_at=now, outcome=outcome)
        return self.steps[i]


def _clock(t: float | None) -> str:
    import time

    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 10) % 10}"


def format_step(step: ScaleStep) -> str:
    took = "-" if step.duration_s is None else f"{step.duration_s:.1f}s"
    return (f"{step.deployment:<24}{step.from_replicas:>4} -> {step.to_replicas:<4}"
            f"{step.direction:<6}{_clock(step.requested_at):>12}{_clock(step.finished_at):>12}"
            f"{took:>9}  {step.outcome}")


def replica_counts(app_name: str) -> dict[str, ReplicaCount]:
    """Target and live replicas of every deployment of ``app_name``, from Serve's controller.

    Needs a connected driver. Serve's public ``serve.status()`` has the replica
    states but not the target, so this reads the controller's instance details
    (the same data as the dashboard's ``/api/serve/applications/``).
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # it raises when no Serve controller runs
    details = client.get_serve_details()
    app = (details.get("applications") or {}).get(app_name)
    if app is None:
        return {}
    out = {}
    for name, dep in (app.get("deployments") or {}).items():
        states = [(str(getattr(r["state"], "value", r["state"])), r.get("node_id"))
                  for r in dep.get("replicas") or []]
        running = [node for state, node in states if state == "RUNNING"]
        out[name] = ReplicaCount(
            target=int(dep.get("target_num_replicas", 0)),
            running=len(running),
            total=len(states),
            nodes=tuple(str(n) for n in running),
        )
    return out


def watch(app_name: str, duration_s: float, interval_s: float = 0.5,
          on_step: Callable[[ScaleStep], None] | None = None,
          stop: Callable[[], bool] | None = None) -> ScaleTracker:
    """Sample ``app_name`` every ``interval_s`` for ``duration_s`` (or until ``stop()``)."""
    import time

    tracker = ScaleTracker()
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and not (stop and stop()):
        for step in tracker.observe(time.time(), replica_counts(app_name)):
            if on_step is not None:
                on_step(step)
        time.sleep(interval_s)
    return tracker
