"""What abserve exports to Ray's Prometheus metrics: names, tags, buckets. Base layer.

The specs are plain values (the dashboards and their tests read them too);
``ray_metric_factory`` turns one into a ``ray.serve.metrics`` object and
imports Ray only when called, in a replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTROLLER_METRICS",
    "DRIFT_METRICS",
    "LATENCY_BOUNDARIES_MS",
    "METRICS",
    "MODEL_METRICS",
    "MetricSpec",
    "exported_names",
    "ray_metric_factory",
]

# Milliseconds: the router's own path is sub-millisecond on a hit, model calls 5-100 ms.
LATENCY_BOUNDARIES_MS = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
]

@dataclass(frozen=True)
class MetricSpec:
    name: str  # exported as ray_<name> (counters: ray_<name>_total)
    kind: str  # counter | histogram | gauge
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


REQUEST_TAGS = ("experiment", "arm", "version", "outcome")
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "abserve_requests", "counter",
            "Requests by the arm chosen and the version that answered; outcome ok, fallback "
            "(the baseline answered) or error (no version could: 503, version none).",
            REQUEST_TAGS,
        ),
        MetricSpec(
            "abserve_request_latency_ms", "histogram",
            "Router-side latency of a request in ms: cache, model call, fallback.",
            REQUEST_TAGS, tuple(LATENCY_BOUNDARIES_MS),
        ),
        MetricSpec(
            "abserve_fallbacks", "counter",
            "Requests routed to an arm that the baseline answered instead, by reason "
            "(error, timeout, unavailable, backpressure, circuit_open).",
            ("experiment", "arm", "version", "reason"),
        ),
        MetricSpec(
            "abserve_arm_errors", "counter",
            "Failed calls to a version (circuit_open: refused by its breaker).",
            ("experiment", "version", "reason"),
        ),
        MetricSpec(
            "abserve_cache_lookups", "counter",
            "Prediction cache look-ups by input row: hit, miss or bypass (Redis skipped).",
            ("experiment", "version", "result"),
        ),
        MetricSpec(
            "abserve_shadow_compared", "counter",
            "Input rows a shadow version answered and that were compared with the primary.",
            ("experiment", "version"),
        ),
        MetricSpec(
            "abserve_shadow_agreed", "counter",
            "Compared shadow rows that agreed with the primary's answer (the same label; for a "
            "regression model every output within experiment.agreement_rtol / agreement_atol).",
            ("experiment", "version"),
        ),
        MetricSpec(
            "abserve_shadow_errors", "counter",
            "Shadow calls that failed.", ("experiment", "version"),
        ),
        MetricSpec(
            "abserve_shadow_latency_ms", "histogram",
            "Latency of shadow calls in ms (merged, background).",
            ("experiment", "version"), tuple(LATENCY_BOUNDARIES_MS),
        ),
        MetricSpec(
            "abserve_log_rows", "counter",
            "Prediction log rows by table (predictions, feedback) and result: written, "
            "dropped (the router's buffer was full) or failed (the write did: a full disk, an "
            "unreachable store). Counted by the log's own thread.",
            ("experiment", "table", "result"),
        ),
    )
}

# Recorded by the model replicas (deployments/model.py), once per backend call; named here
# so that one registry holds every exported name (the dashboard test checks against it).
MODEL_TAGS = ("model", "version")
MODEL_METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "abserve_model_batch_rows", "histogram",
            "Rows per backend call (after @serve.batch).",
            MODEL_TAGS, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
        MetricSpec(
            "abserve_model_predict_ms", "histogram", "Time of one backend predict call in ms.",
            MODEL_TAGS, (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
        ),
    )
}


# Set by the experiment controller after each router sync (router/controlplane/split.py
# ``SplitTest.gauges``): the sample-ratio check, so that an alert can page on a broken split.
CONTROLLER_METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "abserve_srm_p_value", "gauge",
            "Anytime-valid sample-ratio-mismatch p-value of the experiment (Lindon-Malek): the "
            "assignment counts, pins left out, against the weights in force.",
            ("experiment",),
        ),
        MetricSpec(
            "abserve_srm_mismatch", "gauge",
            "1 while the experiment's split is flagged (abserve_srm_p_value < 0.001), else 0.",
            ("experiment",),
        ),
    )
}


# Set by the experiment controller from its drift windows (router/controlplane/drift.py
# ``DriftMonitor.gauges``), per version and input channel; docs/monitoring.md, Drift.
DRIFT_TAGS = ("experiment", "version", "channel")
DRIFT_METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "abserve_drift_psi", "gauge",
            "Population stability index of a version's inputs over the drift window against "
            "its reference, per input channel.", DRIFT_TAGS,
        ),
        MetricSpec(
            "abserve_drift_ks", "gauge",
            "Two-sample KS statistic (binned) of a version's inputs over the drift window "
            "against its reference, per input channel.", DRIFT_TAGS,
        ),
        MetricSpec(
            "abserve_drift_label_js", "gauge",
            "Jensen-Shannon distance of a version's predicted-label distribution over the "
            "window from the reference's (channel labels_vs_reference) or the baseline's "
            "(labels_vs_baseline).", DRIFT_TAGS,
        ),
        MetricSpec(
            "abserve_drift_alert", "gauge",
            "1 while any drift statistic of the version is past its threshold, else 0.",
            DRIFT_TAGS,
        ),
        MetricSpec(
            "abserve_drift_window_accuracy", "gauge",
            "Accuracy of the feedback labels joined in the drift window (concept drift).",
            DRIFT_TAGS,
        ),
        MetricSpec(
            "abserve_drift_alerts", "counter",
            "Drift alerts raised (each at most once per window), by version and statistic "
            "(in the channel tag: psi, ks, label_js).", DRIFT_TAGS,
        ),
    )
}


def exported_names(spec: MetricSpec) -> tuple[str, ...]:
    """The names Ray's Prometheus export gives a metric (ray_ prefix; _total; _bucket...)."""
    base = f"ray_{spec.name}"
    if spec.kind == "histogram":
        return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
    if spec.kind == "gauge":
        return (base,)
    return (f"{base}_total",)


def ray_metric_factory(spec: MetricSpec) -> Any:
    """One ray.serve.metrics object per spec (call in a replica: Serve adds its tags)."""
    from ray.serve import metrics

    # Ray annotates tag_keys as Tuple[str] (one key); any tuple of str is meant.
    tag_keys: Any = spec.tag_keys
    if spec.kind == "histogram":
        return metrics.Histogram(
            spec.name, spec.description, list(spec.boundaries), tag_keys=tag_keys
        )
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, spec.description, tag_keys=tag_keys)
    return metrics.Counter(spec.name, spec.description, tag_keys=tag_keys)

