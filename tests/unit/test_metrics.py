"""Router metrics: RouterCore reports to its recorder, the buffer hands exact counts to fake
metric objects with the right tags. No Ray (the Ray objects are made by a factory)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import numpy as np
import pytest

from router.dataplane.cache import LocalCache, PredictionCache
from router.dataplane.core import RouterCore
from router.dataplane.recorder import BufferedRecorder, NullRecorder
from serve.config import ShadowConfig
from serve.errors import ServiceUnavailable
from serve.telemetry import METRICS, MetricSpec
from tests.unit.test_core import CONFIG, Clock, FakeArms, X

EXP = CONFIG.experiment.name  # RouterCore tells its recorder the experiment's name


class FakeMetric:
    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.counts: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self.values: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)

    def _key(self, tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
        assert tags is not None and set(tags) == set(self.spec.tag_keys), tags
        return tuple(sorted(tags.items()))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert self.spec.kind == "counter" and value > 0
        self.counts[self._key(tags)] += value

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.spec.kind == "histogram"
        self.values[self._key(tags)].append(value)

    def get(self, **tags: str) -> float:
        """Sum over the series that match the given tags."""
        return sum(n for k, n in self.counts.items() if set(tags.items()) <= set(k))


def make(cache: bool = False) -> tuple[RouterCore, FakeArms, BufferedRecorder]:
    arms, clock = FakeArms(), Clock()
    recorder = BufferedRecorder(FakeMetric, "unset")
    backend = LocalCache() if cache else None
    core = RouterCore(
        CONFIG, arms, PredictionCache(backend, width=2, clock=clock), clock,
        random.Random(0), recorder=recorder,
    )
    return core, arms, recorder


def metric(recorder: BufferedRecorder, name: str) -> FakeMetric:
    m = recorder.metrics[name]
    assert isinstance(m, FakeMetric)
    return m


def test_specs_have_the_prefix_and_the_experiment_tag() -> None:
    for name, spec in METRICS.items():
        assert name.startswith("abserve_") and spec.name == name
        assert "experiment" in spec.tag_keys
        assert not {"deployment", "replica", "application"} & set(spec.tag_keys)  # Serve's own
        assert (spec.kind == "histogram") == bool(spec.boundaries)


def test_requests_fallbacks_and_errors_are_tagged_by_arm_and_version() -> None:
    core, arms, rec = make()

    async def go() -> None:
        await core.predict(X)  # v2 answers
        arms.failing["v2"] = "timeout"
        await core.predict(X)  # v1 answers for v2
        arms.failing["v1"] = "error"
        with pytest.raises(ServiceUnavailable):
            await core.predict(X)  # nobody answers: 503

    asyncio.run(go())
    assert not metric(rec, "abserve_requests").counts  # nothing until flushed
    rec.flush()
    req = metric(rec, "abserve_requests")
    assert req.get(experiment=EXP, arm="v2", version="v2", outcome="ok") == 1
    assert req.get(arm="v2", version="v1", outcome="fallback") == 1
    assert req.get(arm="v2", version="none", outcome="error") == 1
    fb = metric(rec, "abserve_fallbacks")
    assert dict(fb.counts) == {
        (("arm", "v2"), ("experiment", EXP), ("reason", "timeout"), ("version", "v1")): 1
    }
    errors = metric(rec, "abserve_arm_errors")
    assert errors.get(version="v2", reason="timeout") == 2
    assert errors.get(version="v1", reason="error") == 1
    latency = metric(rec, "abserve_request_latency_ms")
    assert sum(len(v) for v in latency.values.values()) == 3
    rec.flush()  # nothing new: nothing counted twice
    assert req.get() == 3


def test_cache_hits_misses_and_bypass() -> None:
    core, _, rec = make(cache=True)

    async def go() -> None:
        await core.predict(X)  # miss
        await asyncio.sleep(0)  # the background write lands
        await core.predict(np.concatenate([X, X + 1]))  # one hit, one miss
        core.cache.breaker.record_failure()  # Redis "down": skipped
        await core.predict(X)

    asyncio.run(go())
    rec.flush()
    cache = metric(rec, "abserve_cache_lookups")
    assert cache.get(version="v2", result="miss") == 2
    assert cache.get(version="v2", result="hit") == 1
    assert cache.get(version="v2", result="bypass") == 1


def test_shadow_agreement_and_errors() -> None:
    core, arms, rec = make()
    core.set_experiment(
        CONFIG.experiment.model_copy(update={"shadows": [ShadowConfig(version="v1", percent=100)]})
    )

    async def go() -> None:
        await core.predict(np.concatenate([X, X]))
        await asyncio.sleep(0.01)
        arms.failing["v1"] = "error"
        await core.predict(X)
        await asyncio.sleep(0.01)

    asyncio.run(go())
    rec.flush()
    assert metric(rec, "abserve_shadow_compared").get(version="v1") == 2
    assert metric(rec, "abserve_shadow_agreed").get(version="v1") == 0  # v1 and v2 disagree
    assert metric(rec, "abserve_shadow_errors").get(version="v1") == 1
    assert sum(map(len, metric(rec, "abserve_shadow_latency_ms").values.values())) == 1


def test_experiment_rename_keeps_earlier_counts_under_the_old_name() -> None:
    core, _, rec = make()
    asyncio.run(core.predict(X))
    core.set_experiment(CONFIG.experiment.model_copy(update={"name": "exp-b"}))
    asyncio.run(core.predict(X))
    rec.flush()
    req = metric(rec, "abserve_requests")
    assert req.get(experiment=EXP) == 1 and req.get(experiment="exp-b") == 1


def test_default_is_the_null_recorder() -> None:
    core = RouterCore(CONFIG, FakeArms(), PredictionCache(None, width=2), Clock())
    assert isinstance(core.recorder, NullRecorder)



def test_latencies_are_a_uniform_sample_and_counts_stay_exact() -> None:
    """router.latency_samples_per_s: at most the cap per flush reach the histogram."""
    recorder = BufferedRecorder(FakeMetric, EXP, max_latencies=200, rng=random.Random(1))
    for i in range(10_000):
        recorder.request("v1", "v1", "ok", float(i))
    recorder.flush()
    hist = metric(recorder, "abserve_request_latency_ms")
    kept = [v for values in hist.values.values() for v in values]
    assert len(kept) == 200 and len(set(kept)) == 200
    # A uniform sample of 0..9999: mean ~5000 (sd of the mean ~204), both halves present.
    assert 4300 < sum(kept) / len(kept) < 5700
    assert min(kept) < 1000 and max(kept) > 9000
    assert metric(recorder, "abserve_requests").get(version="v1") == 10_000


def test_without_a_cap_every_latency_is_recorded() -> None:
    recorder = BufferedRecorder(FakeMetric, EXP)
    for i in range(1000):
        recorder.request("v1", "v1", "ok", float(i))
    recorder.flush()
    hist = metric(recorder, "abserve_request_latency_ms")
    kept = sorted(v for values in hist.values.values() for v in values)
    assert kept == [float(i) for i in range(1000)]
