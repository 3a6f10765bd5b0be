"""Colocated versions (deployments/colocated.py) and the Arms that prefer them. No Ray.

The copy runs on its own thread with a timeout; a failure, a hang or a busy
thread hands the call to the version's deployment (a fake handle here); the
router core's fallback, breaker and single flight sit above and see one call.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import numpy as np
import pytest

from deployments.colocated import ColocatedModel, choose_colocated
from models.registry import Manifest
from router.dataplane.cache import LocalCache, PredictionCache
from router.dataplane.core import RouterCore
from router.dataplane.upstream import Arms, RayRuntime
from serve.config import BreakerConfig, parse_config
from serve.errors import ArmBusy, InvalidInput, UpstreamError

ROWS = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)


def _probs(batch: np.ndarray, tag: float) -> np.ndarray:
    out = np.zeros((len(batch), 2), dtype=np.float32)
    out[:, 0] = tag
    out[:, 1] = 1 - tag
    return out


class FakeReplica:
    """ModelReplica's compute/stats; behaves as told."""

    def __init__(self, tag: float = 0.25) -> None:
        self.tag = tag
        self.error: Exception | None = None
        self.hold: threading.Event | None = None
        self.calls = 0
        self.threads: set[str] = set()

    def compute(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.hold is not None:
            self.hold.wait(10)
        if self.error is not None:
            raise self.error
        return _probs(batch, self.tag)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}


class _Response:
    def __init__(self, out: Any) -> None:
        self.out = out

    def __await__(self):  # type: ignore[no-untyped-def]
        async def result() -> Any:
            await asyncio.sleep(0)
            if isinstance(self.out, BaseException):
                raise self.out
            return self.out
        return result().__await__()

    def cancel(self) -> None:
        pass


class FakeHandle:
    """A DeploymentHandle's predict: the remote replicas of a version."""

    def __init__(self, tag: float) -> None:
        self.tag = tag
        self.calls = 0
        self.error: Exception | None = None

    def options(self, **_: Any) -> FakeHandle:
        return self

    def remote(self, batch: np.ndarray) -> _Response:
        self.calls += 1
        return _Response(self.error if self.error is not None else _probs(batch, self.tag))


class FakeRuntime(RayRuntime):
    def running_replicas(self, handle: Any) -> int | None:
        return 3


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _config(**router: Any) -> Any:
    return parse_config({
        "model": "m", "registry": "/nonexistent",
        "models": [{"version": "v1"}, {"version": "v2"}],
        "experiment": {"baseline": "v1", "arms": [{"version": "v1", "weight": 50},
                                                    {"version": "v2", "weight": 50}],
                       "breaker": {"failure_threshold": 3, "cooldown_s": 10}},
        "router": router,
    })


def _arms(local: dict[str, ColocatedModel], clock: Clock | None = None,
          ) -> tuple[Arms, dict[str, FakeHandle]]:
    cfg = _config()
    handles = {"v1": FakeHandle(0.75), "v2": FakeHandle(0.5)}
    arms = Arms(handles, FakeRuntime(), cfg.models, 1, colocated=local,
                breaker=BreakerConfig(failure_threshold=3, cooldown_s=10),
                clock=clock or Clock())
    return arms, handles


# ------------------------------------------------------------ the copy itself


def test_a_call_runs_on_the_copys_own_thread_and_returns_its_answer() -> None:
    replica = FakeReplica()
    model = ColocatedModel("v1", replica)
    out = asyncio.run(model.predict(ROWS, 1.0))
    np.testing.assert_array_equal(out, _probs(ROWS, 0.25))
    assert replica.threads == {"colocated-v1_0"}
    assert model.stats()["colocated_calls"] == 1 and model.stats()["calls"] == 1
    model.close()


def test_a_raising_model_is_an_upstream_error_and_invalid_input_passes() -> None:
    replica = FakeReplica()
    model = ColocatedModel("v1", replica)
    replica.error = RuntimeError("boom")
    with pytest.raises(UpstreamError) as info:
        asyncio.run(model.predict(ROWS, 1.0))
    assert info.value.reason == "error" and model.failures == 1
    replica.error = InvalidInput("bad shape")
    with pytest.raises(InvalidInput):
        asyncio.run(model.predict(ROWS, 1.0))
    model.close()


def test_a_hung_model_times_out_never_blocks_the_loop_and_refuses_while_busy() -> None:
    replica = FakeReplica()
    replica.hold = threading.Event()
    model = ColocatedModel("v1", replica)

    async def run() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        with pytest.raises(UpstreamError) as info:
            await model.predict(ROWS, 0.2)
        took = time.perf_counter() - started
        assert info.value.reason == "timeout" and 0.18 <= took < 1.0
        assert ticks >= 10  # the event loop kept running while the model hung
        # The thread is still held: the next call is refused at once, not queued.
        started = time.perf_counter()
        with pytest.raises(UpstreamError) as info:
            await model.predict(ROWS, 5.0)
        assert isinstance(info.value, ArmBusy) and time.perf_counter() - started < 0.1
        assert model.busy and model.refused_busy == 1
        replica.hold.set()
        replica.hold = None
        for _ in range(100):
            if not model.busy:
                break
            await asyncio.sleep(0.01)
        np.testing.assert_array_equal(await model.predict(ROWS, 1.0), _probs(ROWS, 0.25))
        task.cancel()

    asyncio.run(run())
    model.close()


# ------------------------------------------------------------ which versions


def _manifest(version: str, framework: str) -> Manifest:
    return Manifest(name="m", version=version, framework=framework, input_shape=(3,),
                    input_dtype="float32", class_labels=("a", "b"), accuracy=None,
                    training_time_s=None, created_at="", artifact="x", sha256="0" * 64)


def test_auto_colocates_small_sklearn_versions_only() -> None:
    cfg = parse_config({
        "model": "m", "registry": "/r",
        "models": [{"version": "a"}, {"version": "b"}, {"version": "c"},
                   {"version": "d", "colocated": True}, {"version": "e", "colocated": False},
                   {"version": "f", "num_gpus": 0.5}, {"version": "g", "resources": {"n2": 1}},
                   {"version": "h", "autoscaling": {"min_replicas": 1, "max_replicas": 2}}],
        "experiment": {"baseline": "a", "arms": [{"version": "a", "weight": 100}]},
    })
    manifests = {"a": _manifest("a", "sklearn"), "b": _manifest("b", "sklearn"),
                 "c": _manifest("c", "torch"), "d": _manifest("d", "tensorflow"),
                 "e": _manifest("e", "sklearn"), "f": _manifest("f", "sklearn"),
                 "g": _manifest("g", "sklearn"), "h": _manifest("h", "sklearn")}
    sizes = {"a": 3.0, "b": 900.0, "c": 1.0, "d": 1.0, "e": 1.0, "f": 1.0, "g": 1.0, "h": 1.0}
    got = {c.version: c.colocated for c in choose_colocated(cfg.models, manifests, sizes, 256)}
    assert got == {"a": True, "b": False, "c": False, "d": True, "e": False, "f": False,
                   "g": False, "h": False}


# ------------------------------------------------------------ Arms prefer the copy


def test_arms_serve_a_colocated_version_locally_and_remote_ones_remotely() -> None:
    arms, handles = _arms({"v1": ColocatedModel("v1", FakeReplica(0.25))})
    np.testing.assert_array_equal(asyncio.run(arms.predict("v1", ROWS, 1.0)), _probs(ROWS, 0.25))
    np.testing.assert_array_equal(asyncio.run(arms.predict("v2", ROWS, 1.0)), _probs(ROWS, 0.5))
    assert handles["v1"].calls == 0 and handles["v2"].calls == 1
    assert arms.hop_limit("v1") == 1 and arms.hop_limit("v2") == 3
    assert asyncio.run(arms.ready("v1", 1.0))


def test_a_failing_copy_hands_the_call_to_the_versions_deployment_then_opens() -> None:
    clock = Clock()
    replica = FakeReplica(0.25)
    replica.error = RuntimeError("broken copy")
    arms, handles = _arms({"v1": ColocatedModel("v1", replica)}, clock)
    for _ in range(3):  # threshold: the copy is tried each time, the deployment answers
        np.testing.assert_array_equal(
            asyncio.run(arms.predict("v1", ROWS, 1.0)), _probs(ROWS, 0.75))
    assert replica.calls == 3 and handles["v1"].calls == 3 and arms.remote_after_local["v1"] == 3
    # Open: the copy is skipped, the deployment alone answers, its replica count gates.
    asyncio.run(arms.predict("v1", ROWS, 1.0))
    assert replica.calls == 3 and handles["v1"].calls == 4
    assert arms.hop_limit("v1") == 3
    # After the cool-down the copy is tried again; healthy, it serves once more.
    clock.t = 11
    replica.error = None
    np.testing.assert_array_equal(asyncio.run(arms.predict("v1", ROWS, 1.0)), _probs(ROWS, 0.25))
    assert replica.calls == 4 and handles["v1"].calls == 4 and arms.hop_limit("v1") == 1


def test_both_copies_failing_is_one_upstream_error() -> None:
    replica = FakeReplica()
    replica.error = RuntimeError("copy down")
    arms, handles = _arms({"v1": ColocatedModel("v1", replica)})
    handles["v1"].error = TimeoutError()
    with pytest.raises(UpstreamError) as info:
        asyncio.run(arms.predict("v1", ROWS, 1.0))
    assert info.value.reason == "timeout"


# ------------------------------------------------------------ the core above them


def _core(arms: Arms, clock: Clock, cache: bool = False) -> RouterCore:
    cfg = _config()
    backend = LocalCache(1000) if cache else None
    return RouterCore(cfg, arms.predict, PredictionCache(backend, width=2, ttl_s=60,
                                                         timeout_s=1.0, retry_after_s=1.0),
                      clock, rng=random.Random(0))


@pytest.mark.parametrize("colocated", ["candidate", "baseline"])
def test_fallback_between_a_colocated_and_a_remote_version(colocated: str) -> None:
    """A colocated candidate fails (copy and deployment): the remote baseline answers;
    a remote candidate fails: the colocated baseline answers."""
    clock = Clock()
    version = "v2" if colocated == "candidate" else "v1"
    replica = FakeReplica(0.25)
    arms, handles = _arms({version: ColocatedModel(version, replica)}, clock)
    core = _core(arms, clock)
    if colocated == "candidate":
        replica.error = RuntimeError("candidate copy down")
        handles["v2"].error = RuntimeError("candidate replicas down")
        expected = _probs(ROWS, 0.75)  # the remote baseline
    else:
        handles["v2"].error = RuntimeError("candidate replicas down")
        expected = _probs(ROWS, 0.25)  # the colocated baseline
    pred = asyncio.run(core.predict(ROWS, pinned="v2"))
    assert pred.fallback and pred.version == "v1" and pred.arm == "v2"
    np.testing.assert_array_equal(pred.outputs, expected)


def test_the_core_breaker_opens_on_a_colocated_candidate_and_the_baseline_answers() -> None:
    clock = Clock()
    replica = FakeReplica(0.25)
    replica.error = RuntimeError("down")
    arms, handles = _arms({"v2": ColocatedModel("v2", replica)}, clock)
    handles["v2"].error = RuntimeError("down too")
    core = _core(arms, clock)
    for _ in range(3):
        assert asyncio.run(core.predict(ROWS, pinned="v2")).fallback
    assert core.breakers["v2"].state.value == "open"
    calls = replica.calls, handles["v2"].calls
    pred = asyncio.run(core.predict(ROWS, pinned="v2"))
    assert pred.fallback and pred.fallback_reason == "circuit_open"
    assert (replica.calls, handles["v2"].calls) == calls  # nobody called while open


def test_single_flight_holds_for_a_colocated_version() -> None:
    clock = Clock()
    replica = FakeReplica(0.25)
    arms, _ = _arms({"v1": ColocatedModel("v1", replica)}, clock)
    core = _core(arms, clock, cache=True)

    async def run() -> list[Any]:
        return await asyncio.gather(*(core.predict(ROWS[:1], pinned="v1") for _ in range(8)))

    preds = asyncio.run(run())
    assert replica.calls == 1 and core.flight_joins == 7
    assert all(p.version == "v1" and not p.fallback for p in preds)


def test_a_hung_colocated_candidate_never_delays_the_baseline() -> None:
    clock = Clock()
    replica = FakeReplica(0.25)
    replica.hold = threading.Event()
    arms, handles = _arms({"v2": ColocatedModel("v2", replica)}, clock)
    handles["v2"].error = RuntimeError("deployment down too")
    core = _core(arms, clock)

    async def run() -> tuple[Any, float]:
        slow = asyncio.create_task(core.predict(ROWS, pinned="v2"))  # hangs up to 1 s
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        fast = await core.predict(ROWS, pinned="v1")
        took = time.perf_counter() - started
        replica.hold.set()  # type: ignore[union-attr]
        await slow
        return fast, took

    try:
        fast, took = asyncio.run(run())
    finally:
        replica.hold.set()
    assert fast.version == "v1" and not fast.fallback and took < 0.1


def test_a_candidates_failing_copy_is_the_candidates_failure() -> None:
    """As for a remote arm: no second try on its deployment, the core falls back."""
    replica = FakeReplica()
    replica.error = RuntimeError("down")
    arms, handles = _arms({"v2": ColocatedModel("v2", replica)})
    arms.retry_on_deployment = lambda version: version == "v1"  # v1 is the baseline
    with pytest.raises(UpstreamError):
        asyncio.run(arms.predict("v2", ROWS, 1.0))
    assert handles["v2"].calls == 0 and arms.remote_after_local["v2"] == 0


def test_a_candidates_timed_out_copy_costs_one_timeout() -> None:
    """No second timeout on the deployment: the caller falls back after the version's."""
    replica = FakeReplica()
    replica.hold = threading.Event()
    arms, handles = _arms({"v1": ColocatedModel("v1", replica)}, Clock())
    arms.retry_on_deployment = lambda version: False
    arms._clock = time.monotonic  # real time: the copy's thread really waits  # noqa: SLF001
    started = time.perf_counter()
    try:
        with pytest.raises(UpstreamError) as info:
            asyncio.run(arms.predict("v1", ROWS, 0.2))
    finally:
        replica.hold.set()
    assert info.value.reason == "timeout" and time.perf_counter() - started < 0.5
    assert handles["v1"].calls == 0


def test_a_busy_copy_spills_to_the_deployment_without_counting_a_failure() -> None:
    replica = FakeReplica(0.25)
    replica.hold = threading.Event()
    arms, handles = _arms({"v1": ColocatedModel("v1", replica)})

    async def run() -> list[np.ndarray]:
        first = asyncio.create_task(arms.predict("v1", ROWS, 5.0))
        await asyncio.sleep(0.05)  # the copy's thread is now held by the first call
        spilled = [await arms.predict("v1", ROWS, 5.0) for _ in range(5)]
        replica.hold.set()  # type: ignore[union-attr]
        return [await first, *spilled]

    try:
        outs = asyncio.run(run())
    finally:
        replica.hold.set()
    np.testing.assert_array_equal(outs[0], _probs(ROWS, 0.25))
    assert all(np.array_equal(o, _probs(ROWS, 0.75)) for o in outs[1:])
    assert handles["v1"].calls == 5 and arms.spilled["v1"] == 5
    assert arms.remote_after_local["v1"] == 0
    assert arms._local_breakers["v1"].state.value == "closed"  # noqa: SLF001


def test_the_copy_rests_after_a_call_so_the_event_loop_keeps_its_share() -> None:
    """max_busy 0.5: after a call of d seconds, the next call waits out the rest of d."""
    clock = Clock()

    class Timed(FakeReplica):
        def compute(self, batch: np.ndarray) -> np.ndarray:
            clock.t += 0.05  # the call takes 50 ms of the clock
            return super().compute(batch)

    model = ColocatedModel("v1", Timed(), max_busy=0.5, clock=clock)
    asyncio.run(model.predict(ROWS, 1.0))
    clock.t += 0.01
    started = time.perf_counter()
    asyncio.run(model.predict(ROWS, 1.0))  # waits the 40 ms of rest that are left
    assert 0.03 <= time.perf_counter() - started < 0.5
    assert model.calls == 2 and model.refused_busy == 0
    model.close()


def test_while_the_router_sheds_load_colocated_calls_go_to_the_deployment() -> None:
    replica = FakeReplica(0.25)
    arms, handles = _arms({"v1": ColocatedModel("v1", replica)})
    shedding = True
    arms.overloaded = lambda: shedding
    np.testing.assert_array_equal(asyncio.run(arms.predict("v1", ROWS, 1.0)), _probs(ROWS, 0.75))
    shedding = False
    np.testing.assert_array_equal(asyncio.run(arms.predict("v1", ROWS, 1.0)), _probs(ROWS, 0.25))
    assert replica.calls == 1 and handles["v1"].calls == 1 and arms.spilled_overload["v1"] == 1
