"""The experiment's numbers: router reports in, feedback joined, the report out.

Pure Python, no Ray (the controller deployment only delegates here). Each
router replica reports its *cumulative* counters under its own id, so the
experiment's figures are the sum over replica ids: a report repeated or lost
changes nothing, and a restarted replica (new id) starts again from zero
without losing its predecessor's counts. Feedback is joined to the prediction
that was served for a request id, at most once.

Durability (``journal`` and ``counters()``, written by the service): a served
prediction and a counted label are appended to the journal, fsynced, before
they are acknowledged (the sync's reply, the feedback's 200); on start the
journal is replayed, so the predictions still waiting for a label and every
label counted survive a SIGKILL of the controller and a full down / up. The
replicas' cumulative counters are a snapshot the service saves (at most one
poll interval behind); live routers re-report theirs on the next sync anyway,
so only the last second of a router that died with the controller is lost.

Per output kind (models/kinds.py; the router has checked the truth against it): a
classifier's served answer is its label index, a binary model's ``[label, score]``
(the score also feeds the AUC's histogram) and a regression model's list of values;
the truth is a label index, or a list of values whose errors go into ``ErrorMoments``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.kinds import MULTICLASS, REGRESSION
from router.controlplane.analysis import build_report
from router.controlplane.kind_stats import ErrorMoments, ScoreHistogram
from router.controlplane.split import SplitMonitor, SplitTally
from router.controlplane.store import Journal
from router.dataplane.measures import ArmMetrics
from router.dataplane.shadow import ShadowStats
from serve.errors import InvalidInput, NotFound

__all__ = ["Ledger"]

HISTORY_EVERY_S = 10.0
HISTORY_POINTS = 720  # two hours at one point per 10 s
# The journal is rewritten once it holds more than twice the live entries plus this
# slack: each rewrite copies at most as many lines as were appended since the last one.
COMPACT_SLACK = 10_000


class Ledger:
    def __init__(
        self,
        versions: Sequence[str],
        *,
        ttl_s: float = 86_400,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.versions = list(versions)
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self.journal = journal
        self.replica_metrics: dict[str, dict[str, ArmMetrics]] = {}
        self.replica_shadows: dict[str, dict[str, ShadowStats]] = {}
        self.served: OrderedDict[str, list[Any]] = OrderedDict()  # id -> [t, version, label, seen]
        self.feedback: dict[str, list[int]] = {}  # version -> [correct, total]
        self.errors: dict[str, ErrorMoments] = {}  # regression: version -> its errors
        self.scores: dict[str, ScoreHistogram] = {}  # binary: version -> scores by truth
        self.kind = MULTICLASS  # the model's output kind, as its routers report it
        self.history: list[dict[str, Any]] = []
        self._last_history = float("-inf")
        self.split = SplitMonitor()  # the sample-ratio check over the routers' assignments
        if journal is not None:
            self._replay(journal)

    # ------------------------------------------------------------ durability

    def _replay(self, journal: Journal) -> None:
        """Served predictions (``s``), counted labels (``f``, a binary model's with its
        score and truth), counted values (``e``) and compacted counts (``c``)."""
        for rec in journal.replay():
            kind = rec[0]
            if kind == "s":
                _, rid, version, label, t, seen = rec
                self.served.setdefault(rid, [t, version, label, seen])
            elif kind in ("f", "e"):
                rid, version = rec[1], rec[2]
                if kind == "f":
                    self._count_label(version, bool(rec[3]), *rec[4:6])
                else:
                    self._count_values(version, rec[3], rec[4])
                entry = self.served.get(rid)
                if entry is not None:
                    entry[3] = True
            elif kind == "c":
                self.feedback = {v: [int(c), int(t)] for v, (c, t) in rec[1].items()}
                more = rec[2] if len(rec) > 2 else {}
                self.errors = {v: ErrorMoments.from_dict(m)
                               for v, m in more.get("errors", {}).items()}
                self.scores = {v: ScoreHistogram.from_dict(h)
                               for v, h in more.get("scores", {}).items()}
        self._expire(self.clock())

    def _count_label(self, version: str, correct: bool, score: float | None = None,
                     truth: int | None = None) -> None:
        counts = self.feedback.setdefault(version, [0, 0])
        counts[0] += int(correct)
        counts[1] += 1
        if score is not None and truth is not None:
            self.scores.setdefault(version, ScoreHistogram()).add(float(score), int(truth))

    def _count_values(self, version: str, predicted: Sequence[float],
                      actual: Sequence[float]) -> None:
        self.errors.setdefault(version, ErrorMoments()).add(predicted, actual)

    def _compact_if_due(self) -> None:
        journal = self.journal
        if journal is None or journal.lines <= 2 * len(self.served) + COMPACT_SLACK:
            return
        journal.rewrite([
            ["c", self.feedback, {"errors": {v: m.to_dict() for v, m in self.errors.items()},
                                  "scores": {v: h.to_dict() for v, h in self.scores.items()}}],
            *(["s", rid, v, label, t, seen] for rid, (t, v, label, seen) in self.served.items()),
        ])

    def counters(self) -> dict[str, Any]:
        """The replicas' cumulative counters as JSON (the service saves it)."""
        return {
            "metrics": {r: {v: m.to_dict() for v, m in per.items()}
                        for r, per in self.replica_metrics.items()},
            "shadows": {r: {v: s.to_dict() for v, s in per.items()}
                        for r, per in self.replica_shadows.items()},
            "split": self.split.tally.to_dict(),
            "kind": self.kind,
        }

    def restore(self, counters: Mapping[str, Any] | None,
                history: Mapping[str, Any] | None) -> None:
        """What ``counters()`` and the history saved; a replica that reports again replaces
        its entry (its counters are cumulative)."""
        for replica, per in (counters or {}).get("metrics", {}).items():
            self.replica_metrics[replica] = {v: ArmMetrics.from_dict(m) for v, m in per.items()}
        for replica, per in (counters or {}).get("shadows", {}).items():
            self.replica_shadows[replica] = {v: ShadowStats.from_dict(s) for v, s in per.items()}
        self.kind = str((counters or {}).get("kind", self.kind))
        split = (counters or {}).get("split")
        if split:
            # The tally so far; each replica's next two syncs re-establish its weights
            # (what is served meanwhile is excluded, as after any weight change).
            self.split = SplitMonitor(tally=SplitTally.from_dict(split))
        self.history = list((history or {}).get("points", []))[-HISTORY_POINTS:]
        if self.history:
            self._last_history = float(self.history[-1].get("time", float("-inf")))

    def update(self, replica: str, payload: Mapping[str, Any],
               weights: Mapping[str, float] | None = None) -> bool:
        """One router replica's cumulative metrics, shadow stats and served predictions.

        ``weights``: what this sync's reply tells the replica (None under the bandit,
        where no weights are in force), for the sample-ratio check. Returns whether a
        history point was added (the service then saves the history).
        """
        self.replica_metrics[replica] = {
            v: ArmMetrics.from_dict(m) for v, m in payload.get("metrics", {}).items()
        }
        self.kind = str(payload.get("kind", self.kind))
        self.split.observe(
            replica, {v: m.assigned for v, m in self.replica_metrics[replica].items()}, weights
        )
        self.replica_shadows[replica] = {
            v: ShadowStats.from_dict(s) for v, s in payload.get("shadows", {}).items()
        }
        now = self.clock()
        fresh = [(rid, v, answer if isinstance(answer, list) else int(answer))
                 for rid, v, answer in payload.get("served", ())
                 if rid not in self.served]  # a report resent after a lost reply
        if fresh and self.journal is not None:
            self.journal.append(["s", rid, v, label, now, False] for rid, v, label in fresh)
        for request_id, version, label in fresh:
            self.served[request_id] = [now, version, label, False]
        self._expire(now)
        self._compact_if_due()
        if now - self._last_history >= HISTORY_EVERY_S:
            self._record_history(now)
            return True
        return False

    def _expire(self, now: float) -> None:
        while self.served:
            first = next(iter(self.served.values()))
            if len(self.served) > self.max_entries or now - first[0] > self.ttl_s:
                self.served.popitem(last=False)
            else:
                break

    def record_feedback(self, request_id: str, label: int | list[float]) -> dict[str, Any]:
        """Join ground truth to a served prediction; a second feedback does not count.

        ``label``: a label index (classifiers) or the true values (regression).
        """
        self._expire(self.clock())
        entry = self.served.get(request_id)
        if entry is None:
            raise NotFound(f"unknown or expired request_id {request_id!r}", field="request_id")
        _, version, predicted, seen = entry
        if seen:
            return {"request_id": request_id, "status": "duplicate", "counted": False}
        out: dict[str, Any] = {"request_id": request_id, "status": "recorded", "counted": True,
                               "version": version}
        if isinstance(label, list):  # regression: the values and their errors
            if not isinstance(predicted, list) or len(predicted) != len(label):
                raise InvalidInput(f"request {request_id!r} was answered with "
                                   f"{predicted!r}; a value of that shape is expected",
                                   field="value")
            record: list[Any] = ["e", request_id, version, predicted, label]
            apply = lambda: self._count_values(version, predicted, label)  # noqa: E731
            out["abs_error"] = sum(abs(p - a) for p, a in zip(predicted, label, strict=True)) \
                / len(label)
        else:
            binary = isinstance(predicted, list)
            if binary and (len(predicted) != 2 or self.kind == REGRESSION):
                raise InvalidInput(f"request {request_id!r} was answered with values, not a "
                                   "label: send its true value", field="label")
            pred_label = int(predicted[0]) if binary else int(predicted)
            correct = int(pred_label == label)
            record = ["f", request_id, version, correct]
            if binary:
                record += [float(predicted[1]), int(label)]
            apply = lambda: self._count_label(version, bool(correct), *record[4:6])  # noqa: E731
            out["correct"] = bool(correct)
        if self.journal is not None:  # durable before it is counted and answered
            self.journal.append([record])
        entry[3] = True
        apply()
        return out

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
        report = build_report(self.merged_metrics(), baseline, weights=weights,
                              split=self.split.test(), kind=self.kind, errors=self.errors,
                              scores=self.scores)
        report["shadows"] = {v: s.summary() for v, s in self.merged_shadows().items()}
        report["history"] = self.history
        report["generated_at"] = self.clock()
        return report
