"""RouterCore with an injected model call: fallback, breaker, cache, pinning."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from router.dataplane.cache import LocalCache, PredictionCache
from router.dataplane.core import RouterCore
from serve.config import ArmConfig, ShadowConfig, parse_config
from serve.errors import InvalidInput, NotFound, ServiceUnavailable, UpstreamError

CONFIG = parse_config(
    {
        "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {
            "baseline": "v1",
            "arms": [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 100}],
            "breaker": {"failure_threshold": 3, "cooldown_s": 10},
            "compare_percent": 0,  # these tests count calls; one test turns it on
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
    cache = PredictionCache(cache_backend, width=2, clock=clock)
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
    assert pred.outputs[0][0] == pytest.approx(0.9)
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
    assert core.stats["v2"].probes == 0
    del arms.failing["v2"]
    clock.t = 10.0

    async def probe_then_next() -> tuple[Any, Any]:
        # The cool-down is over: this request's rows probe v2 in the background,
        # while the request itself is answered by the baseline at once.
        first = await core.predict(X)
        assert core.breakers["v2"].state.value == "half_open"
        await asyncio.sleep(0)  # the background probe runs
        await asyncio.sleep(0)
        return first, await core.predict(X)

    first, second = run(probe_then_next)
    assert first.fallback and first.fallback_reason == "circuit_open" and first.version == "v1"
    assert core.breakers["v2"].state.value == "closed"  # the probe succeeded
    assert not second.fallback and second.version == "v2"
    assert core.stats["v2"].probes == 1  # /stats counts the probe where it is sent


def test_a_slow_candidates_probe_costs_no_client_its_timeout() -> None:
    """Half-open: the client is answered by the baseline while the probe waits on v2."""
    core, arms, clock = make()
    arms.failing["v2"] = "timeout"
    for _ in range(3):
        run(lambda: core.predict(X))
    clock.t = 10.0
    release = asyncio.Event()

    async def scenario() -> Any:
        original = arms.__call__

        async def slow(version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
            if version == "v2":
                await release.wait()  # the probe hangs until released
            return await original(version, batch, timeout_s)

        core.call = slow
        pred = await asyncio.wait_for(core.predict(X), 1.0)  # not held by the probe
        assert core.breakers["v2"].state.value == "half_open"
        release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        return pred

    pred = run(scenario)
    assert pred.fallback and pred.version == "v1"
    assert core.breakers["v2"].state.value == "open"  # the probe timed out: open again


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
        np.testing.assert_allclose(third.outputs[:, 0], [0.2, 0.2, 0.2])

    asyncio.run(go())


def test_metrics_per_arm_and_503_counted_as_error() -> None:
    core, arms, _ = make()
    run(lambda: core.predict(X))
    arms.failing["v2"] = "error"
    run(lambda: core.predict(X))
    arms.failing["v1"] = "error"
    with pytest.raises(ServiceUnavailable):
        run(lambda: core.predict(X))
    m = core.metrics["v2"]
    assert (m.requests, m.fallbacks, m.errors, m.answered) == (3, 1, 1, 1)
    assert m.latency.count == 3


def test_shadow_gets_a_copy_and_never_changes_the_answer() -> None:
    core, arms, _ = make()
    exp = CONFIG.experiment.model_copy(
        update={"shadows": [ShadowConfig(version="v1", percent=100)]}
    )
    core.set_experiment(exp)

    async def go() -> Any:
        pred = await core.predict(X)
        await asyncio.sleep(0.01)  # the shadow call runs in the background
        return pred

    pred = run(go)
    assert pred.version == "v2" and pred.outputs[0][0] == pytest.approx(0.2)
    assert ("v1", 1) in arms.calls  # the shadow was called
    stats = core.shadow_stats["v1"]
    assert stats.compared == 1 and stats.agreement_rate == 0.0  # 0.2/0.8 vs 0.9/0.1
    arms.failing["v1"] = "error"
    pred = run(go)
    assert pred.version == "v2" and core.shadow_stats["v1"].errors == 1


def test_a_sampled_share_of_the_candidates_answers_is_compared_with_the_baseline() -> None:
    core, arms, _ = make()
    core.set_experiment(CONFIG.experiment.model_copy(update={"compare_percent": 100.0}))
    batch = np.zeros((3, 50, 9), np.float32)

    async def go() -> Any:
        pred = await core.predict(batch)
        await asyncio.sleep(0.01)  # the baseline's copy runs in the background
        return pred

    pred = run(go)
    assert pred.version == "v2" and ("v1", 3) in arms.calls  # the client got v2's answer
    m = core.metrics["v2"]
    assert (m.compared, m.disagreed, m.disagreement_rate) == (3, 3, 1.0)  # label 1 vs label 0
    assert m.labels == {1: 3} and core.metrics["v1"].labels == {}
    arms.failing["v1"] = "error"
    run(go)  # the baseline failing says nothing about the candidate
    assert (m.compared, m.labels) == (3, {1: 6})
    arms.failing = {"v2": "error"}
    run(go)  # a fallback is the baseline's answer: neither counted as v2's nor compared
    assert (m.compared, m.labels, m.fallbacks) == (3, {1: 6}, 1)
    core.set_experiment(CONFIG.experiment.model_copy(update={"compare_percent": 0.0}))
    arms.failing = {}
    run(go)
    assert m.compared == 3 and m.labels == {1: 9}
    again = type(m).from_dict(m.to_dict())
    assert again == m and again.subtract(m).labels == {}


def test_bandit_policy_follows_feedback_counts() -> None:
    core, _, _ = make()
    arms_cfg = [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]
    exp = CONFIG.experiment.model_copy(update={"policy": "bandit", "bandit_floor_percent": 5.0})
    exp = exp.model_copy(update={"arms": [ArmConfig(**a) for a in arms_cfg]})
    core.set_experiment(exp)
    core.set_bandit_counts({"v1": 10, "v2": 900}, {"v1": 990, "v2": 100})
    chosen = [core.choose(None, None) for _ in range(2000)]
    share_v2 = chosen.count("v2") / len(chosen)
    assert share_v2 > 0.85 and chosen.count("v1") / len(chosen) >= 0.03


# ---------------------------------------------------------------- single flight


class SlowArms(FakeArms):
    """FakeArms whose calls wait until released, so requests overlap for sure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def __call__(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        self.calls.append((version, len(batch)))
        await self.release.wait()
        if version in self.failing:
            raise UpstreamError("boom", reason=self.failing[version])
        # Each row's answer depends on its input, so mixed-up rows would show.
        first = batch.reshape(len(batch), -1)[:, 0].astype(np.float32)
        return np.stack([first, 1 - first], axis=1) if version == "v2" else np.stack(
            [first + 0.5, 0.5 - first], axis=1
        )


def make_slow() -> tuple[RouterCore, SlowArms]:
    arms, clock = SlowArms(), Clock()
    core = RouterCore(CONFIG, arms, PredictionCache(LocalCache(), width=2, clock=clock),
                      clock, random.Random(0))
    return core, arms


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_single_flight_50_identical_misses_make_one_call() -> None:
    core, arms = make_slow()
    x = np.full((1, 50, 9), 0.25, np.float32)

    async def go() -> list[Any]:
        tasks = [asyncio.ensure_future(core.predict(x)) for _ in range(50)]
        await _settle()
        arms.release.set()
        return await asyncio.gather(*tasks)

    preds = run(go)
    assert arms.calls == [("v2", 1)]
    assert all(p.cache_status == "MISS" and not p.fallback for p in preds)
    assert {p.outputs.tobytes() for p in preds} == {preds[0].outputs.tobytes()}
    np.testing.assert_allclose(preds[0].outputs, [[0.25, 0.75]])
    assert core.flight_joins == 49 and len(core._flights) == 1  # lingers for latecomers
    assert core.stats["v2"].answered == 50


def test_single_flight_batches_share_only_their_common_rows() -> None:
    core, arms = make_slow()
    a = np.stack([np.full((50, 9), 0.1), np.full((50, 9), 0.2), np.full((50, 9), 0.1)])
    b = np.stack([np.full((50, 9), 0.3), np.full((50, 9), 0.2)])

    async def go() -> list[Any]:
        first = asyncio.ensure_future(core.predict(a.astype(np.float32)))
        await _settle()
        second = asyncio.ensure_future(core.predict(b.astype(np.float32)))
        await _settle()
        arms.release.set()
        return await asyncio.gather(first, second)

    pa, pb = run(go)
    # a: rows 0.1 and 0.2 once each (its duplicate row shares); b: only 0.3 is new.
    assert arms.calls == [("v2", 2), ("v2", 1)]
    np.testing.assert_allclose(pa.outputs[:, 0], [0.1, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(pb.outputs[:, 0], [0.3, 0.2], rtol=1e-6)


def test_single_flight_failure_reaches_every_waiter_and_each_falls_back() -> None:
    core, arms = make_slow()
    arms.failing["v2"] = "timeout"
    x = np.full((1, 50, 9), 0.25, np.float32)

    async def go() -> list[Any]:
        tasks = [asyncio.ensure_future(core.predict(x)) for _ in range(10)]
        await _settle()
        arms.release.set()
        return await asyncio.gather(*tasks)

    preds = run(go)
    assert all(p.fallback and p.version == "v1" and p.fallback_reason == "timeout"
               for p in preds)
    assert [v for v, _ in arms.calls].count("v2") == 1  # one shared call failed once
    assert core.stats["v2"].failures == 1 and core.stats["v2"].fallbacks == 10
    assert core.breakers["v2"].consecutive_failures == 1  # the breaker saw one failure
    assert not core._flights


def test_single_flight_a_cancelled_waiter_does_not_cancel_the_call() -> None:
    core, arms = make_slow()
    x = np.full((1, 50, 9), 0.5, np.float32)

    async def go() -> list[Any]:
        leader = asyncio.ensure_future(core.predict(x))
        await _settle()
        others = [asyncio.ensure_future(core.predict(x)) for _ in range(3)]
        await _settle()
        leader.cancel()  # the client that started the call goes away
        await _settle()
        arms.release.set()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await asyncio.gather(*others)

    preds = run(go)
    assert arms.calls == [("v2", 1)]
    assert all(not p.fallback and p.outputs[0][0] == pytest.approx(0.5) for p in preds)

    async def again() -> Any:
        await asyncio.sleep(0.01)  # the flight wrote the cache in the background
        return await core.predict(x)

    assert run(again).cache_status == "HIT"
