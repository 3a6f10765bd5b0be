"""Router metrics for Ray's Prometheus export: counted in Python, handed to Ray in batches.

``RouterCore`` calls a ``Recorder`` at the points where it already counts
(``ArmStats``, ``ArmMetrics``, cache look-ups, shadow comparisons). The default
is ``NullRecorder``; the router replica injects a ``BufferedRecorder`` whose
metric objects come from ``ray.serve.metrics`` (Counter, Histogram), created
once per replica. Ray adds the ``ray_`` prefix on export (counters also get
``_total``) and Serve adds the ``deployment``, ``replica`` and ``application``
tags.

Why buffered: one Ray metric record costs about 7 to 13 microseconds, most of
it converting the tags (about two microseconds per tag; Serve adds three), so
three records per request would cost more than abserve's own routing. Here the
request path only bumps a dict entry and appends the latency to a list (well
under a microsecond); ``snapshot()`` (event-loop thread) swaps the buffers, and
``emit()`` (a worker thread: Ray's record releases the GIL) turns them into one
``inc`` per series and one ``observe`` per kept latency. Counts are exact. Each
``observe`` still costs the router about 10 to 50 microseconds (the profile of
the cache-hit path put them at ~6 % of its CPU at 1,000 req/s), so the router
keeps a uniform sample of the latencies per flush (``router.latency_samples_per_s``):
the histograms' quantiles are unbiased, their ``_count`` is the sample's size,
and ``abserve_requests_total`` stays the exact count.

The metric specs are serve/telemetry.py's; no Ray import here: the pure core and its
unit tests use this file.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve.telemetry import METRICS, MetricSpec

__all__ = ["BufferedRecorder", "NullRecorder", "Recorder", "Snapshot"]

MAX_PENDING_LATENCIES = 200_000  # if emitting stalls, keep counting but drop latencies


class Recorder(Protocol):
    """What RouterCore reports. Cheap: called on the request path."""

    def request(self, arm: str, version: str, outcome: str, latency_ms: float) -> None: ...
    def fallback(self, arm: str, version: str, reason: str) -> None: ...
    def arm_error(self, version: str, reason: str) -> None: ...
    def cache(self, version: str, hits: int, misses: int, bypasses: int) -> None: ...
    def shadow(self, version: str, compared: int, agreed: int, latency_ms: float | None) -> None:
        """``latency_ms`` None: the shadow call failed."""
    def set_experiment(self, name: str) -> None: ...


class NullRecorder:
    """The default: records nothing."""

    def request(self, arm: str, version: str, outcome: str, latency_ms: float) -> None:
        pass

    def fallback(self, arm: str, version: str, reason: str) -> None:
        pass

    def arm_error(self, version: str, reason: str) -> None:
        pass

    def cache(self, version: str, hits: int, misses: int, bypasses: int) -> None:
        pass

    def shadow(self, version: str, compared: int, agreed: int, latency_ms: float | None) -> None:
        pass

    def set_experiment(self, name: str) -> None:
        pass


MetricFactory = Callable[[MetricSpec], Any]


@dataclass
class Snapshot:
    """Counts since the last snapshot: metric name -> tag values -> count (or latencies)."""

    counts: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    observations: dict[str, list[tuple[tuple[str, ...], float]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.counts.values()) or any(self.observations.values())


class BufferedRecorder:
    """Counts in dicts on the request path; ``emit`` hands them to Ray's metric objects."""

    def __init__(self, factory: MetricFactory, experiment: str,
                 max_latencies: int | None = None, rng: random.Random | None = None) -> None:
        """``max_latencies``: latencies kept per snapshot for the histograms, a uniform
        sample of the requests (reservoir sampling); None keeps every one. Counts are
        exact either way."""
        self.metrics = {name: factory(spec) for name, spec in METRICS.items()}
        self.experiment = experiment
        self._cap = MAX_PENDING_LATENCIES if max_latencies is None else max(1, max_latencies)
        self._sampled = max_latencies is not None
        self._rng = rng or random.Random()
        self._tags: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self._reset()

    def _reset(self) -> None:
        self._requests: dict[tuple[str, ...], int] = {}
        self._latencies: list[tuple[tuple[str, ...], float]] = []
        self._seen = 0  # requests since the last snapshot (the reservoir's denominator)
        self._other: dict[str, dict[tuple[str, ...], float]] = {
            name: {}
            for name, spec in METRICS.items()
            if spec.kind == "counter" and name != "abserve_requests"
        }
        self._cache = self._other["abserve_cache_lookups"]
        self._shadow_latencies: list[tuple[tuple[str, ...], float]] = []

    def set_experiment(self, name: str) -> None:
        self.experiment = name  # counts so far keep the old name: it is in their keys

    # ------------------------------------------------------------ request path

    def request(self, arm: str, version: str, outcome: str, latency_ms: float) -> None:
        key = (self.experiment, arm, version, outcome)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self._seen += 1
        if len(self._latencies) < self._cap:
            self._latencies.append((key, latency_ms))
        elif self._sampled:  # keep each request with probability cap / seen
            j = self._rng.randrange(self._seen)
            if j < self._cap:
                self._latencies[j] = (key, latency_ms)

    def _add(self, name: str, key: tuple[str, ...], n: float = 1) -> None:
        counts = self._other[name]
        counts[key] = counts.get(key, 0) + n

    def fallback(self, arm: str, version: str, reason: str) -> None:
        self._add("abserve_fallbacks", (self.experiment, arm, version, reason))

    def arm_error(self, version: str, reason: str) -> None:
        self._add("abserve_arm_errors", (self.experiment, version, reason))

    def cache(self, version: str, hits: int, misses: int, bypasses: int) -> None:
        counts, exp = self._cache, self.experiment
        if hits:
            key = (exp, version, "hit")
            counts[key] = counts.get(key, 0) + hits
        if misses:
            key = (exp, version, "miss")
            counts[key] = counts.get(key, 0) + misses
        if bypasses:
            key = (exp, version, "bypass")
            counts[key] = counts.get(key, 0) + bypasses

    def shadow(self, version: str, compared: int, agreed: int, latency_ms: float | None) -> None:
        key = (self.experiment, version)
        if latency_ms is None:
            self._add("abserve_shadow_errors", key)
            return
        if compared:
            self._add("abserve_shadow_compared", key, compared)
        if agreed:
            self._add("abserve_shadow_agreed", key, agreed)
        if len(self._shadow_latencies) < MAX_PENDING_LATENCIES:
            self._shadow_latencies.append((key, latency_ms))

    # ------------------------------------------------------------ export

    def snapshot(self) -> Snapshot:
        """Take what was counted since the last call (on the thread that records)."""
        snap = Snapshot(
            counts={"abserve_requests": dict(self._requests), **self._other},
            observations={
                "abserve_request_latency_ms": self._latencies,
                "abserve_shadow_latency_ms": self._shadow_latencies,
            },
        )
        self._reset()
        return snap

    def _tagged(self, name: str, key: tuple[str, ...]) -> dict[str, str]:
        tags = self._tags.get((name, key))
        if tags is None:
            tags = self._tags[(name, key)] = dict(zip(METRICS[name].tag_keys, key, strict=True))
        return tags

    def emit(self, snap: Snapshot) -> None:
        """Hand a snapshot to the metric objects (any thread; Ray's record is thread-safe)."""
        for name, counts in snap.counts.items():
            metric = self.metrics[name]
            for key, n in counts.items():
                metric.inc(n, self._tagged(name, key))
        for name, observations in snap.observations.items():
            metric = self.metrics[name]
            for key, ms in observations:
                metric.observe(ms, self._tagged(name, key))

    def flush(self) -> None:
        self.emit(self.snapshot())
