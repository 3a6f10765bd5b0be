"""The experiment's numbers: router reports in, feedback joined, the report out.

Pure Python, no Ray (the controller deployment only delegates here). Each
router replica reports its *cumulative* counters under its own id, so the
experiment's figures are the sum over replica ids: a report repeated or lost
changes nothing, and a restarted replica (new id) starts again from zero
without losing its predecessor's counts. Feedback is joined to the prediction
that was served for a request id, at most once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.controlplane.analysis import build_report
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats
from serve.errors import NotFound

__all__ = ["Ledger"]

HISTORY_EVERY_S = 10.0
HISTORY_POINTS = 720  # two hours at one point per 10 s


class Ledger:
    def __init__(
        self,
        versions: Sequence[str],
        *,
        ttl_s: float = 86_400,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.versions = list(versions)
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self.replica_metrics: dict[str, dict[str, ArmMetrics]] = {}
        self.replica_shadows: dict[str, dict[str, ShadowStats]] = {}
        self.served: OrderedDict[str, list[Any]] = OrderedDict()  # id -> [t, version, label, seen]
        self.feedback: dict[str, list[int]] = {}  # version -> [correct, total]
        self.history: list[dict[str, Any]] = []
        self._last_history = float("-inf")

    def update(self, replica: str, payload: Mapping[str, Any]) -> None:
        """One router replica's cumulative metrics, shadow stats and served predictions."""
        self.replica_metrics[replica] = {
            v: ArmMetrics.from_dict(m) for v, m in payload.get("metrics", {}).items()
        }
        self.replica_shadows[replica] = {
            v: ShadowStats.from_dict(s) for v, s in payload.get("shadows", {}).items()
        }
        now = self.clock()
        for request_id, version, label in payload.get("served", ()):
            self.served[request_id] = [now, version, label, False]
        self._expire(now)
        if now - self._last_history >= HISTORY_EVERY_S:
            self._record_history(now)

    def _expire(self, now: float) -> None:
        while self.served:
            first = next(iter(self.served.values()))
            if len(self.served) > self.max_entries or now - first[0] > self.ttl_s:
                self.served.popitem(last=False)
            else:
                break

    def record_feedback(self, request_id: str, label: int) -> dict[str, Any]:
        """Join ground truth to a served prediction; a second feedback does not count."""
        self._expire(self.clock())
        entry = self.served.get(request_id)
        if entry is None:
            raise NotFound(f"unknown or expired request_id {request_id!r}", field="request_id")
        _, version, predicted, seen = entry
        if seen:
            return {"request_id": request_id, "status": "duplicate", "counted": False}
        entry[3] = True
        correct = int(predicted == label)
        counts = self.feedback.setdefault(version, [0, 0])
        counts[0] += correct
        counts[1] += 1
        return {"request_id": request_id, "status": "recorded", "counted": True,
                "version": version, "correct": bool(correct)}

    def bandit_counts(self) -> dict[str, dict[str, int]]:
        return {
            "successes": {v: c for v, (c, _) in self.feedback.items()},
            "failures": {v: t - c for v, (c, t) in self.feedback.items()},
        }

    def merged_metrics(self) -> dict[str, ArmMetrics]:
        merged = {v: ArmMetrics() for v in self.versions}
        for per_replica in self.replica_metrics.values():
            for v, m in per_replica.items():
                merged[v] = merged.get(v, ArmMetrics()).merge(m)
        for v, (correct, total) in self.feedback.items():
            merged.setdefault(v, ArmMetrics()).record_feedback(True, correct)
            merged[v].record_feedback(False, total - correct)
        return merged

    def merged_shadows(self) -> dict[str, ShadowStats]:
        merged: dict[str, ShadowStats] = {}
        for per_replica in self.replica_shadows.values():
            for v, s in per_replica.items():
                merged[v] = merged[v].merge(s) if v in merged else s
        return merged

    def _record_history(self, now: float) -> None:
        self._last_history = now
        point: dict[str, Any] = {"time": now, "arms": {}}
        for v, m in self.merged_metrics().items():
            point["arms"][v] = {"requests": m.requests, "p50_ms": m.latency.quantile(0.5),
                                "p99_ms": m.latency.quantile(0.99), "accuracy": m.accuracy,
                                "fallbacks": m.fallbacks, "errors": m.errors}
        self.history.append(point)
        del self.history[:-HISTORY_POINTS]

    def report(self, baseline: str, weights: Mapping[str, float]) -> dict[str, Any]:
        """Per arm: traffic, errors, fallbacks, latency, accuracy with CI, significance."""
        report = build_report(self.merged_metrics(), baseline, weights=weights)
        report["shadows"] = {v: s.summary() for v, s in self.merged_shadows().items()}
        report["history"] = self.history
        report["generated_at"] = self.clock()
        return report
