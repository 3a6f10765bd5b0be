"""RouterCore with an injected model call: fallback, breaker, cache, pinning."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from router.cache import LocalCache, PredictionCache
from router.core import RouterCore
from serve.config import parse_config
from serve.errors import InvalidInput, NotFound, ServiceUnavailable, UpstreamError

CONFIG = parse_config(
    {
        "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 100}],
            "breaker": {"failure_threshold": 3, "cooldown_s": 10},
        },
    }
)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeArms:
    """Each version answers a constant row, or raises what it is told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failing: dict[str, str] = {}

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        self.calls.append((version, len(batch)))
        if version in self.failing:
            raise UpstreamError("boom", reason=self.failing[version])
        p = 0.9 if version == "v1" else 0.2
        return np.tile(np.asarray([p, 1 - p], np.float32), (len(batch), 1))


def make(cache_backend: Any = None) -> tuple[RouterCore, FakeArms, Clock]:
    arms, clock = FakeArms(), Clock()
    cache = PredictionCache(cache_backend, n_classes=2, clock=clock)
    core = RouterCore(CONFIG, arms, cache, clock, random.Random(0))
    return core, arms, clock


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


X = np.zeros((1, 50, 9), np.float32)


def test_candidate_answers_when_healthy() -> None:
    core, arms, _ = make()
    pred = run(lambda: core.predict(X))
    assert (pred.version, pred.arm, pred.fallback) == ("v2", "v2", False)
    assert pred.cache_status == "BYPASS"  # no cache configured


@pytest.mark.parametrize("reason", ["error", "timeout", "unavailable", "backpressure"])
def test_failed_candidate_falls_back_to_baseline(reason: str) -> None:
    core, arms, _ = make()
    arms.failing["v2"] = reason
    pred = run(lambda: core.predict(X))
    assert (pred.version, pred.arm, pred.fallback, pred.fallback_reason) == (
        "v1", "v2", True, reason
    )
    assert pred.probabilities[0][0] == pytest.approx(0.9)
    assert core.stats["v2"].fallbacks == 1 and core.stats["v1"].answered == 1


def test_breaker_opens_then_skips_the_candidate_then_probes() -> None:
    core, arms, clock = make()
    arms.failing["v2"] = "error"
    for _ in range(3):
        run(lambda: core.predict(X))
    assert [v for v, _ in arms.calls].count("v2") == 3
    arms.calls.clear()
    for _ in range(5):
        pred = run(lambda: core.predict(X))
        assert pred.fallback and pred.fallback_reason == "circuit_open"
    assert [v for v, _ in arms.calls] == ["v1"] * 5  # v2 not called while open
    del arms.failing["v2"]
    clock.t = 10.0
    pred = run(lambda: core.predict(X))  # the probe succeeds and closes the circuit
    assert not pred.fallback and core.breakers["v2"].state.value == "closed"


def test_baseline_failure_is_503() -> None:
    core, arms, _ = make()
    arms.failing.update(v1="error", v2="error")
    with pytest.raises(ServiceUnavailable):
        run(lambda: core.predict(X))
    with pytest.raises(ServiceUnavailable):
        run(lambda: core.predict(X, pinned="v1"))


def test_pinning_and_unknown_version() -> None:
    core, arms, _ = make()
    assert run(lambda: core.predict(X, pinned="v1")).version == "v1"
    with pytest.raises(NotFound):
        run(lambda: core.predict(X, pinned="v7"))


def test_invalid_input_from_a_model_is_not_a_fallback() -> None:
    core, _, _ = make()

    async def refuse(version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        raise InvalidInput("bad")

    core.call = refuse
    with pytest.raises(InvalidInput):
        run(lambda: core.predict(X))


def test_cache_hit_then_partial_batch() -> None:
    core, arms, _ = make(LocalCache())

    async def go() -> None:
        first = await core.predict(X)
        assert first.cache_status == "MISS" and first.cached == (False,)
        await asyncio.sleep(0)  # let the background write land
        second = await core.predict(X)
        assert second.cache_status == "HIT" and second.cached == (True,)
        mixed = np.concatenate([X, X + 1, X])
        third = await core.predict(mixed)
        assert third.cached == (True, False, True) and third.cache_status == "MISS"
        assert arms.calls[-1] == ("v2", 1)  # only the missing row went to the model
        np.testing.assert_allclose(third.probabilities[:, 0], [0.2, 0.2, 0.2])

    asyncio.run(go())
