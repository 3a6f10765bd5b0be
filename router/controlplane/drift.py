"""Data and prediction drift per version, over sliding windows. Pure: numpy, no Ray.

What arrives: each router replica bins the inputs its versions answered with the edges of
that version's reference (models/reference.py) off its event loop, and sends the counts
with its periodic sync (``SyncReport.drift``); the controller adds them here, into time
buckets of ``drift.step_s``. A window is the buckets of the last ``drift.window_s``; rows
age out as buckets fall out of it. Per version and window:

- per input channel, the population stability index (``psi``) and the two-sample KS
  statistic (``ks_binned``) of the window's counts against the reference's;
- the predicted-label distribution (a regression model: its first output's histogram)
  against the reference's and against the baseline's over the same window: the
  Jensen-Shannon distance (base 2, in [0, 1]) and Pearson's chi-square homogeneity
  p-value (``router.controlplane.stats.label_shift`` and its ``chi2_sf``: the regularized
  incomplete gamma, as the project keeps scipy out of the router);
- the accuracy of the window's feedback (concept drift), where labels arrive.

A statistic past its threshold (``drift.psi_alert``, ``ks_alert``, ``label_js_alert``) is an
alert: logged once per window (the same alert is logged again only ``window_s`` later),
counted, and shown in the report. Windows with fewer than ``drift.min_rows`` input rows
are not judged (a PSI over a handful of rows is noise).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.reference import Reference, load_reference
from router.controlplane.stats import label_shift
from serve.config import AbserveConfig, DriftConfig
from serve.telemetry import DRIFT_METRICS, MetricSpec

__all__ = [
    "DriftBuffer",
    "DriftGauges",
    "DriftMonitor",
    "js_distance",
    "kolmogorov_sf",
    "ks_binned",
    "ks_p_value",
    "load_references",
    "psi",
    "summarize_drift",
]

log = logging.getLogger("ray.serve")

PSI_EPS = 1e-4  # the share given to an empty bin, so that ln(p / q) stays finite


def _shares(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else c


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray,
        eps: float = PSI_EPS) -> float:
    """Population stability index of binned ``live`` counts against ``reference``'s:
    ``sum((p_live - p_ref) * ln(p_live / p_ref))`` over the bins, empty bins given the share
    ``eps``. 0 for the same distribution; 0.1 is the usual "watch", 0.25 "shifted"."""
    p = np.maximum(_shares(live), eps)
    q = np.maximum(_shares(reference), eps)
    return float(np.sum((p - q) * np.log(p / q)))


def ks_binned(reference: Sequence[float] | np.ndarray,
              live: Sequence[float] | np.ndarray) -> float:
    """The two-sample KS statistic from binned counts: the largest gap between the two
    empirical CDFs at the bin edges.

    It approximates the KS statistic of the raw samples (scipy.stats.ks_2samp) from below:
    the exact statistic is the supremum over every value, this one over the edges only, so
    it is never larger and is short by at most the probability mass of one bin on either
    side (about 1/bins of the reference's for quantile edges; tests/unit/test_drift.py
    holds that bound). A shift inside one bin is invisible to it.
    """
    a, b = _shares(reference), _shares(live)
    if a.sum() == 0 or b.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(a) - np.cumsum(b))))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution: ``2 * sum((-1)^(k-1) exp(-2 k^2 x^2))``
    (scipy.stats.kstwobign.sf)."""
    if x <= 0:
        return 1.0
    if x < 0.2:  # the alternating series converges slowly here; the value is 1 to 1e-15
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-17:
            break
    return max(0.0, min(1.0, 2.0 * total))


def ks_p_value(d: float, n: int, m: int) -> float:
    """The asymptotic two-sample KS p-value of statistic ``d`` with ``n`` and ``m`` samples
    (scipy's ``ks_2samp(method="asymp")`` without its small-sample correction).

    The drift report passes input rows (instances), not channel samples: the 50 time steps
    of one window are not independent draws, and counting them would make every p tiny.
    """
    if n <= 0 or m <= 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf(en * d)


def js_distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors
    (scipy.spatial.distance.jensenshannon(a, b, base=2))."""
    p, q = _shares(a), _shares(b)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    mid = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / mid[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def _label_compare(a: Sequence[int] | np.ndarray,
                   b: Sequence[int] | np.ndarray) -> dict[str, float] | None:
    """JS distance and chi-square homogeneity p of two count vectors; None if one is empty."""
    ca = {i: int(c) for i, c in enumerate(a)}
    cb = {i: int(c) for i, c in enumerate(b)}
    shift = label_shift(ca, cb)
    if shift is None:
        return None
    return {"js": round(js_distance(a, b), 6), "p_value": shift[1]}


def load_references(
    config: AbserveConfig, manifests: Mapping[str, Any] | None = None,
) -> dict[str, Reference | None]:
    """Each deployed version's reference from the registry; None where it has none (drift is
    then not computed for it) or where it cannot be read (logged)."""
    from models.registry import Registry

    registry = Registry(config.registry)
    out: dict[str, Reference | None] = {}
    for m in config.models:
        try:
            manifest = (manifests or {}).get(m.version) or registry.manifest(config.model,
                                                                             m.version)
            out[m.version] = load_reference(registry, manifest)
        except Exception as exc:  # noqa: BLE001 - drift must never stop serving
            log.warning("no drift reference for %s %s: %s", config.model, m.version, exc)
            out[m.version] = None
    return out


@dataclass
class _Bucket:
    """One step's counts for one version."""

    index: int  # floor(time / step_s)
    rows: int = 0
    channels: np.ndarray | None = None  # (channels, bins)
    answers: np.ndarray | None = None
    correct: int = 0
    judged: int = 0


@dataclass
class _VersionWindow:
    buckets: deque[_Bucket] = field(default_factory=deque)

    def bucket(self, index: int) -> _Bucket:
        if not self.buckets or self.buckets[-1].index < index:
            self.buckets.append(_Bucket(index))
        elif self.buckets[-1].index > index:  # a late report: count it in the newest bucket
            return self.buckets[-1]
        return self.buckets[-1]

    def expire(self, first_index: int) -> None:
        while self.buckets and self.buckets[0].index < first_index:
            self.buckets.popleft()

    def totals(self) -> tuple[int, np.ndarray | None, np.ndarray | None, int, int]:
        rows, correct, judged = 0, 0, 0
        channels: np.ndarray | None = None
        answers: np.ndarray | None = None
        for b in self.buckets:
            rows += b.rows
            correct += b.correct
            judged += b.judged
            if b.channels is not None:
                channels = b.channels.copy() if channels is None else channels + b.channels
            if b.answers is not None:
                answers = b.answers.copy() if answers is None else answers + b.answers
        return rows, channels, answers, correct, judged


def _add(into: np.ndarray | None, counts: Any) -> np.ndarray | None:
    arr = np.asarray(counts, dtype=np.int64)
    if arr.size == 0:
        return into
    if into is None or into.shape != arr.shape:
        return arr.copy()
    return into + arr


class DriftMonitor:
    """Per version, the sliding window of binned inputs, answers and feedback, and the
    statistics against the version's reference. ``clock``: seconds (injected)."""

    def __init__(
        self,
        config: DriftConfig,
        references: Mapping[str, Reference | None],
        *,
        clock: Callable[[], float] = time.time,
        on_alert: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.references = dict(references)
        self.clock = clock
        self.on_alert = on_alert
        self.windows: dict[str, _VersionWindow] = {}
        self.alert_counts: dict[tuple[str, str], int] = {}  # (version, statistic) -> alerts
        self._last_alert: dict[tuple[str, str, str], float] = {}

    def _index(self, now: float) -> int:
        return math.floor(now / self.config.step_s)

    def _window(self, version: str, now: float) -> _VersionWindow:
        win = self.windows.setdefault(version, _VersionWindow())
        win.expire(self._first_index(now))
        return win

    def _first_index(self, now: float) -> int:
        steps = max(1, round(self.config.window_s / self.config.step_s))
        return self._index(now) - steps + 1

    def add(self, version: str, payload: Mapping[str, Any], now: float | None = None) -> None:
        """One router's binned counts: ``rows``, ``channels`` (channels x bins) and
        ``answers`` (per label, or per output bin)."""
        if not self.config.enabled or self.references.get(version) is None:
            return
        now = self.clock() if now is None else now
        bucket = self._window(version, now).bucket(self._index(now))
        bucket.rows += int(payload.get("rows", 0))
        bucket.channels = _add(bucket.channels, payload.get("channels", ()))
        bucket.answers = _add(bucket.answers, payload.get("answers", ()))

    def add_feedback(self, version: str, correct: bool, now: float | None = None) -> None:
        """A label joined to one of the version's answers (concept drift: window accuracy)."""
        if not self.config.enabled:
            return
        now = self.clock() if now is None else now
        bucket = self._window(version, now).bucket(self._index(now))
        bucket.judged += 1
        bucket.correct += int(correct)

    # ------------------------------------------------------------ the statistics

    def version_report(self, version: str, baseline: str | None = None,
                       now: float | None = None) -> dict[str, Any]:
        """The window's statistics of one version (JSON-ready)."""
        now = self.clock() if now is None else now
        cfg = self.config
        ref = self.references.get(version)
        out: dict[str, Any] = {"version": version, "window_s": cfg.window_s,
                               "step_s": cfg.step_s}
        if ref is None:
            out.update(status="no reference", rows=0, channels=[], alerts=[])
            return out
        rows, channels, answers, correct, judged = self._window(version, now).totals()
        out["rows"] = rows
        out["reference_rows"] = ref.rows
        out["accuracy"] = (None if not judged else
                           {"correct": correct, "labelled": judged,
                            "accuracy": round(correct / judged, 6)})
        alerts: list[dict[str, Any]] = []
        out["channels"] = []
        if rows < cfg.min_rows or channels is None:
            out.update(status="warming up", alerts=alerts, max_psi=None, max_ks=None,
                       labels=None)
            return out
        for i, ch in enumerate(ref.channels):
            live = channels[i, : len(ch.counts)] if i < len(channels) else np.zeros(0)
            p = psi(ch.counts, live)
            d = ks_binned(ch.counts, live)
            row = {"name": ch.name, "psi": round(p, 6), "ks": round(d, 6),
                   "ks_p": ks_p_value(d, rows, ref.rows)}
            out["channels"].append(row)
            if p > cfg.psi_alert:
                alerts.append({"statistic": "psi", "channel": ch.name, "value": round(p, 6),
                               "threshold": cfg.psi_alert})
            if d > cfg.ks_alert:
                alerts.append({"statistic": "ks", "channel": ch.name, "value": round(d, 6),
                               "threshold": cfg.ks_alert})
        out["max_psi"] = max((c["psi"] for c in out["channels"]), default=None)
        out["max_ks"] = max((c["ks"] for c in out["channels"]), default=None)
        labels: dict[str, Any] = {}
        if answers is not None and ref.answers:
            against_ref = _label_compare(ref.answers, answers)
            if against_ref is not None:
                labels["reference"] = against_ref
            if baseline is not None and baseline != version:
                base = self.windows.get(baseline)
                base_answers = base.totals()[2] if base is not None else None
                if base_answers is not None and base_answers.shape == answers.shape:
                    against_base = _label_compare(base_answers, answers)
                    if against_base is not None:
                        labels["baseline"] = against_base
            for against, result in labels.items():
                if result["js"] > cfg.label_js_alert:
                    alerts.append({"statistic": "label_js", "channel": against,
                                   "value": result["js"], "threshold": cfg.label_js_alert})
        out["labels"] = labels or None
        out["alerts"] = alerts
        out["status"] = "alert" if alerts else "ok"
        self._notify(version, alerts, now)
        return out

    def _notify(self, version: str, alerts: Sequence[Mapping[str, Any]], now: float) -> None:
        """Each alert once per window: again only ``window_s`` after it was last raised; the
        version's new alerts in one log line."""
        fresh = []
        for alert in alerts:
            key = (version, str(alert["statistic"]), str(alert["channel"]))
            last = self._last_alert.get(key)
            if last is not None and now - last < self.config.window_s:
                continue
            self._last_alert[key] = now
            counted = (version, str(alert["statistic"]))
            self.alert_counts[counted] = self.alert_counts.get(counted, 0) + 1
            fresh.append(f"{alert['statistic']} on {alert['channel']} = {alert['value']:.4g} > "
                         f"{alert['threshold']:g}")
            if self.on_alert is not None:
                self.on_alert({"version": version, **alert, "time": now})
        if fresh:
            log.warning("drift alert: version %s: %s (window %gs)", version, "; ".join(fresh),
                        self.config.window_s)

    def report(self, versions: Sequence[str], baseline: str | None = None,
               now: float | None = None) -> dict[str, Any]:
        """The report's ``drift`` section: every version's window, and the thresholds."""
        now = self.clock() if now is None else now
        cfg = self.config
        return {
            "enabled": cfg.enabled,
            "thresholds": {"psi_alert": cfg.psi_alert, "ks_alert": cfg.ks_alert,
                           "label_js_alert": cfg.label_js_alert, "min_rows": cfg.min_rows},
            "window_s": cfg.window_s,
            "step_s": cfg.step_s,
            "versions": {v: self.version_report(v, baseline, now) for v in versions},
            "alerts_raised": {f"{v}/{s}": n for (v, s), n in sorted(self.alert_counts.items())},
        }

    def gauges(self, report: Mapping[str, Any]) -> list[tuple[str, float, dict[str, str]]]:
        """(metric name, value, tags) for the controller's gauges, from ``report()``."""
        out: list[tuple[str, float, dict[str, str]]] = []
        for v, row in report.get("versions", {}).items():
            if row.get("status") in ("no reference", "warming up"):
                continue
            for ch in row.get("channels", ()):
                tags = {"version": v, "channel": ch["name"]}
                out.append(("abserve_drift_psi", float(ch["psi"]), tags))
                out.append(("abserve_drift_ks", float(ch["ks"]), tags))
            for against, res in (row.get("labels") or {}).items():
                out.append(("abserve_drift_label_js", float(res["js"]),
                            {"version": v, "channel": f"labels_vs_{against}"}))
            out.append(("abserve_drift_alert", 1.0 if row.get("alerts") else 0.0,
                        {"version": v, "channel": "any"}))
            acc = row.get("accuracy")
            if acc:
                out.append(("abserve_drift_window_accuracy", float(acc["accuracy"]),
                            {"version": v, "channel": "feedback"}))
        return out



class DriftBuffer:
    """A router replica's side: what the request path hands over, binned later.

    ``append`` is all the request path does: it keeps a reference to the batch and the
    answers (no copy, no arithmetic), up to ``max_rows`` input rows between two syncs;
    rows past that are counted in ``dropped`` and not binned. ``bin`` (run by the follower
    in a thread, off the event loop) turns what ``take`` returned into the counts the sync
    report carries: per version ``{"rows", "channels", "answers"}``.
    """

    def __init__(self, references: Mapping[str, Reference | None], max_rows: int) -> None:
        self.references = {v: r for v, r in references.items() if r is not None}
        self.max_rows = max_rows
        self._pending: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []
        self._rows = 0
        self._unsent: dict[str, dict[str, Any]] = {}
        self.dropped = 0

    @property
    def active(self) -> bool:
        return bool(self.references)

    def append(self, version: str, batch: np.ndarray, labels: np.ndarray | None,
               outputs: np.ndarray) -> None:
        if version not in self.references:
            return
        n = len(batch)
        if self._rows + n > self.max_rows:
            self.dropped += n
            return
        self._pending.append((version, batch, labels, outputs))
        self._rows += n

    def take(self) -> list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]]:
        pending, self._pending, self._rows = self._pending, [], 0
        return pending

    def bin(self, pending: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]],
            ) -> dict[str, dict[str, Any]]:
        """Counts per version (plus any a failed sync left unsent); pure numpy."""
        grouped: dict[str, list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]] = {}
        for version, batch, labels, outputs in pending:
            grouped.setdefault(version, []).append((batch, labels, outputs))
        out, self._unsent = self._unsent, {}
        for version, items in grouped.items():
            ref = self.references[version]
            batch = np.concatenate([b for b, _, _ in items])
            outputs = np.concatenate([o for _, _, o in items])
            labels = (None if any(lb is None for _, lb, _ in items)
                      else np.concatenate([lb for _, lb, _ in items if lb is not None]))
            payload = {"rows": int(len(batch)),
                       "channels": ref.bin_inputs(batch, batch.shape[1:]).tolist(),
                       "answers": ref.bin_answers(labels, outputs).tolist()}
            out[version] = _merge_payload(out.get(version), payload)
        return out

    def keep(self, binned: Mapping[str, dict[str, Any]]) -> None:
        """Counts whose sync failed: sent with the next one."""
        for version, payload in binned.items():
            self._unsent[version] = _merge_payload(self._unsent.get(version), payload)


def _merge_payload(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    merged: dict[str, Any] = {"rows": a["rows"] + b["rows"]}
    for key in ("channels", "answers"):
        x, y = np.asarray(a[key]), np.asarray(b[key])
        merged[key] = (x + y).tolist() if x.shape == y.shape else b[key]
    return merged


class DriftGauges:
    """The drift windows as Ray metrics (serve/telemetry.py DRIFT_METRICS), tags experiment,
    version and channel. ``factory``: ``ray_metric_factory`` in the controller, anything
    with ``set`` / ``inc`` in tests."""

    def __init__(self, factory: Callable[[MetricSpec], Any], experiment: str) -> None:
        self.metrics = {name: factory(spec) for name, spec in DRIFT_METRICS.items()}
        self.experiment = experiment

    def update(self, monitor: DriftMonitor, report: Mapping[str, Any]) -> None:
        for name, value, tags in monitor.gauges(report):
            self.metrics[name].set(value, tags={"experiment": self.experiment, **tags})

    def alert(self, alert: Mapping[str, Any]) -> None:
        self.metrics["abserve_drift_alerts"].inc(1, tags={
            "experiment": self.experiment, "version": str(alert["version"]),
            "channel": str(alert["statistic"])})


def summarize_drift(row: Mapping[str, Any]) -> str:
    """One version's drift in a few words, for `abserve status`'s drift column."""
    status = str(row.get("status", "-"))
    if status != "alert":
        if status == "ok" and row.get("max_psi") is not None:
            return f"ok psi={row['max_psi']:.2f}"
        return status
    worst = max(row.get("alerts", ()), key=lambda a: a["value"] / a["threshold"])
    return f"ALERT {worst['statistic']} {worst['channel']}={worst['value']:.2f}"
