"""The router's decisions and their order, with the model call injected.

``RouterCore.predict`` is the request path of ARCHITECTURE.md steps 2 to 7:
choose an arm, look the inputs up in the cache, ask the arm's breaker, call
the arm with its timeout, fall back to the baseline on any failure, write the
cache in the background. The model call is a plain async function
``call(version, batch, timeout_s)`` that raises ``UpstreamError`` on failure;
``router/dataplane/upstream.py`` (``Arms.predict``) supplies the real one, unit tests a
fake one. No Ray import here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from models.kinds import OutputSpec
from router.dataplane.bandit import ThompsonPolicy
from router.dataplane.batcher import ArmCall
from router.dataplane.cache import PredictionCache, cache_key
from router.dataplane.fallback import BreakerState, CircuitBreaker
from router.dataplane.measures import ArmMetrics
from router.dataplane.policy import Arm, Policy, RouteContext, WeightedPolicy
from router.dataplane.recorder import NullRecorder, Recorder
from router.dataplane.shadow import ShadowStats
from serve.config import AbserveConfig, ExperimentConfig
from serve.errors import ConfigError, NotFound, ServiceUnavailable, UpstreamError

__all__ = ["ArmStats", "Prediction", "RouterCore"]


def _retrieve(fut: asyncio.Future[np.ndarray]) -> None:
    """A flight's failure may have no waiter left; mark it seen (no asyncio warning)."""
    if not fut.cancelled():
        fut.exception()

SHADOW_DELAY_S = 0.002
# A finished flight answers latecomers a little longer, while its cache write lands.
FLIGHT_LINGER_S = 0.5


@dataclass(frozen=True)
class Prediction:
    outputs: np.ndarray  # (n, width): what the model's kind says (models/kinds.py)
    version: str  # the version that answered
    arm: str  # the version the policy (or the pin) chose
    cached: tuple[bool, ...]
    cache_status: str  # HIT (all rows), MISS, BYPASS
    fallback: bool
    fallback_reason: str | None = None
    spec: OutputSpec | None = None  # None: a multiclass model (the labels are the argmax)

    @cached_property
    def labels(self) -> np.ndarray:
        """Each row's predicted class index, computed once per answer: the metrics, the
        baseline comparison and the follower's served log all read it. A regression
        model's answers have none (TypeError)."""
        if self.spec is None:
            return np.argmax(self.outputs, axis=1)
        return self.spec.labels_of(self.outputs)

    @property
    def classifies(self) -> bool:
        return self.spec is None or self.spec.classifies


@dataclass
class ArmStats:
    requests: int = 0  # requests routed to this arm
    answered: int = 0  # requests this version answered (fallbacks count for the baseline)
    failures: int = 0  # calls to this arm that failed
    fallbacks: int = 0  # requests routed here that the baseline answered instead
    rejected_by_breaker: int = 0
    probes: int = 0  # half-open probes sent to this arm (in the background, no client waits)


@dataclass
class RouterCore:
    config: AbserveConfig
    call: ArmCall
    cache: PredictionCache
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    # Shadow copies may take a slower, more patient path (bigger merged calls).
    shadow_call: ArmCall | None = None
    # Ray metrics (router/dataplane/recorder.py); counts on the request path must stay cheap.
    recorder: Recorder = field(default_factory=NullRecorder)
    # What the answers are (models/kinds.py); None: multiclass, labels by argmax.
    spec: OutputSpec | None = None

    def __post_init__(self) -> None:
        exp = self.config.experiment
        if self.spec is not None and not self.spec.classifies and exp.policy == "bandit":
            raise ConfigError(
                "experiment.policy: the bandit learns from labels and a regression model has "
                "none; use policy: weighted (and a canary to move traffic)"
            )
        self.model = self.config.model
        self.versions = frozenset(m.version for m in self.config.models)
        self.weighted = WeightedPolicy(salt=exp.name, rng=self.rng)
        self.policy: Policy = self.weighted
        self.breakers = {
            v: CircuitBreaker(exp.breaker.failure_threshold, exp.breaker.cooldown_s, self.clock)
            for v in self.versions
        }
        self.stats = {v: ArmStats() for v in self.versions}
        self.metrics = {v: ArmMetrics() for v in self.versions}  # per arm chosen, for the report
        self.shadow_stats: dict[str, ShadowStats] = {}
        self.bandit = ThompsonPolicy(rng=self.rng)
        self._background: set[asyncio.Task[None]] = set()
        # Single flight: cache key -> the future of that row's in-flight model call.
        self._flights: dict[str, asyncio.Future[np.ndarray]] = {}
        self.flight_joins = 0  # rows that shared another request's in-flight call
        self.revision = 0
        self.set_experiment(exp)

    def set_experiment(
        self, exp: ExperimentConfig, weights: dict[str, float] | None = None, revision: int = 0
    ) -> None:
        """Swap in a new experiment (from the controller) in one step.

        ``weights`` overrides the arms' weights (a paused experiment sends all
        traffic to the baseline without forgetting the stored weights).
        """
        arms = tuple(
            Arm(a.version, a.weight if weights is None else weights[a.version],
                baseline=a.version == exp.baseline)
            for a in exp.arms
        )
        timeouts = {v: exp.arm_timeout_s(v) for v in self.versions}
        self.arms, self.baseline, self.timeouts = arms, exp.baseline, timeouts
        self.shadows = tuple(exp.shadows)
        self.compare_share = exp.compare_share
        self.agree_rtol, self.agree_atol = exp.agreement_rtol, exp.agreement_atol
        self.bandit.floor = exp.bandit_floor
        self.policy = self.bandit if exp.policy == "bandit" else self.weighted
        self.revision = revision
        self.recorder.set_experiment(exp.name)

    def set_bandit_counts(self, successes: dict[str, int], failures: dict[str, int]) -> None:
        """Feedback counts from the controller (all routers share one posterior)."""
        self.bandit.successes, self.bandit.failures = dict(successes), dict(failures)

    def choose(self, user_key: str | None, pinned: str | None) -> str:
        if pinned is not None:
            if pinned not in self.versions:
                raise NotFound(
                    f"model version {pinned!r} is not deployed; deployed: {sorted(self.versions)}",
                    field="X-Model-Version",
                )
            return pinned
        return self.policy.choose(RouteContext(user_key=user_key), self.arms).version

    def keys(self, version: str, batch: np.ndarray) -> list[str]:
        prefix = self.config.cache.key_prefix
        return [cache_key(self.model, version, row, prefix) for row in batch]

    async def predict(
        self, batch: np.ndarray, *, user_key: str | None = None, pinned: str | None = None
    ) -> Prediction:
        """One request: route, answer (cache, arm, or baseline), measure, shadow."""
        arm = self.choose(user_key, pinned)
        # ``assigned``: the policy drew the arm at random (no pin, no sticky key), the
        # sample-ratio test's counts. A sticky user's requests all follow one draw, so
        # counting them would inflate the variance and raise false alarms.
        drawn = pinned is None and user_key is None
        started = self.clock()
        try:
            pred = await self._serve_from_cache_or_arm(arm, batch)
        except ServiceUnavailable:
            ms = (self.clock() - started) * 1000.0
            self.metrics[arm].record(ms, error=True, assigned=drawn)
            self.recorder.request(arm, "none", "error", ms)
            raise
        ms = (self.clock() - started) * 1000.0
        self.metrics[arm].record(ms, fallback=pred.fallback, assigned=drawn)
        self.recorder.request(arm, pred.version, "fallback" if pred.fallback else "ok", ms)
        if not pred.fallback:
            if pred.classifies:
                self.metrics[arm].record_labels(pred.labels.tolist())
            if arm != self.baseline and self.rng.random() < self.compare_share:
                # The candidate's answer against the baseline's, for the no-label quality
                # gates; in the background like a shadow, so the client never waits for it.
                asyncio.get_running_loop().call_later(
                    SHADOW_DELAY_S, self._spawn, self._compare, arm, batch, pred.outputs
                )
        for shadow in self.shadows:
            if shadow.version != pred.version and self.rng.random() < shadow.share:
                # Started a moment later, so the client's answer is written out first.
                asyncio.get_running_loop().call_later(
                    SHADOW_DELAY_S, self._spawn,
                    self._shadow, shadow.version, batch, pred.outputs,
                )
        return pred

    def agreement(self, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
        """Per row: do two answers agree (the same label; for regression, within the
        experiment's agreement_rtol / agreement_atol of ``theirs``)."""
        if self.spec is None:
            return np.asarray(np.argmax(ours, axis=1) == np.argmax(theirs, axis=1))
        return self.spec.agreement(ours, theirs, self.agree_rtol, self.agree_atol)

    async def _compare(self, arm: str, batch: np.ndarray, ours: np.ndarray) -> None:
        """The baseline answers the candidate's rows too; the rows where the candidate's
        answers ``ours`` disagree with it are counted, and the mean absolute difference."""
        try:
            out = await (self.shadow_call or self.call)(
                self.baseline, batch, self.timeouts[self.baseline]
            )
        except Exception:  # noqa: BLE001 - the baseline's failure says nothing of the arm
            return
        theirs = np.asarray(out)
        agreed = self.agreement(ours, theirs)
        abs_diff = float(np.abs(ours - theirs).mean(axis=1).sum())
        self.metrics[arm].record_comparison(len(ours), int((~agreed).sum()), abs_diff)

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Start ``fn(*args)`` as a background task (the coroutine is made only now, so a
        timer cancelled with its loop leaves no coroutine that was never awaited)."""
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(self, version: str, batch: np.ndarray, primary: np.ndarray) -> None:
        """A background copy of the request; its result is compared, never returned."""
        stats = self.shadow_stats.setdefault(version, ShadowStats())
        started = self.clock()
        try:
            out = await (self.shadow_call or self.call)(version, batch, self.timeouts[version])
        except Exception:  # noqa: BLE001 - a shadow's failure is a number, not an error
            stats.record_error()
            self.recorder.shadow(version, 0, 0, None)
            return
        ms = (self.clock() - started) * 1000.0
        stats.record_latency(ms)
        compared, agreed = stats.compared, stats.agreed
        stats.record(primary, out, agreed=self.agreement(np.asarray(out), primary))
        self.recorder.shadow(version, stats.compared - compared, stats.agreed - agreed, ms)

    async def _serve_from_cache_or_arm(self, arm: str, batch: np.ndarray) -> Prediction:
        """The cache's rows, the arm's for the rest, or the baseline's when the arm fails."""
        self.stats[arm].requests += 1
        keys: Sequence[str] = ()
        cached: list[list[float] | None] = [None] * len(batch)
        bypassed = not self.cache.enabled
        if self.cache.enabled:
            keys = self.keys(arm, batch)
            lookup = await self.cache.get_many(keys)
            cached, bypassed = lookup.values, lookup.bypassed
        missing = [i for i, v in enumerate(cached) if v is None]
        if self.cache.enabled:
            n = len(batch)
            if bypassed:
                self.recorder.cache(arm, 0, 0, n)
            else:
                self.recorder.cache(arm, n - len(missing), len(missing), 0)
        if not missing:
            self.stats[arm].answered += 1
            return Prediction(
                np.asarray(cached, dtype=np.float32), arm, arm, (True,) * len(batch), "HIT", False,
                spec=self.spec,
            )
        rows = batch if len(missing) == len(batch) else batch[missing]
        try:
            if self.cache.enabled:
                out = await self._single_flight(arm, [keys[i] for i in missing], rows)
            else:
                out = await self._call_guarded(arm, rows)
        except UpstreamError as exc:
            self.stats[arm].fallbacks += 1
            if arm == self.baseline:
                raise ServiceUnavailable(
                    f"the baseline {arm} failed ({exc.reason}) and no other arm may answer"
                ) from None
            try:
                out = await self.call(self.baseline, batch, self.timeouts[self.baseline])
            except UpstreamError as base_exc:
                self.stats[self.baseline].failures += 1
                self.recorder.arm_error(self.baseline, base_exc.reason)
                raise ServiceUnavailable(
                    f"arm {arm} failed ({exc.reason}) and the baseline {self.baseline} "
                    f"failed too ({base_exc.reason})"
                ) from None
            self.stats[self.baseline].answered += 1
            self.recorder.fallback(arm, self.baseline, exc.reason)
            if self.cache.enabled:
                self.cache.set_many_background(
                    list(zip(self.keys(self.baseline, batch), out.tolist(), strict=True))
                )
            status = "BYPASS" if bypassed else "MISS"
            return Prediction(
                out, self.baseline, arm, (False,) * len(batch), status, True, exc.reason,
                self.spec,
            )
        self.stats[arm].answered += 1  # the flight wrote the cache
        if len(missing) == len(batch):
            probs = out
        else:
            probs = np.empty((len(batch), out.shape[1]), dtype=np.float32)
            for i, value in enumerate(cached):
                if value is not None:
                    probs[i] = value
            probs[missing] = out
        flags = tuple(v is not None for v in cached)
        return Prediction(probs, arm, arm, flags, "BYPASS" if bypassed else "MISS", False,
                          spec=self.spec)

    async def _single_flight(self, version: str, keys: list[str], rows: np.ndarray) -> np.ndarray:
        """Rows whose key is already being computed wait for that call; the rest make one.

        Concurrent misses for one (version, input) -- the key names both -- cost
        one model call per router replica. The shared call runs in its own task:
        a waiter that is cancelled stops waiting, the call goes on for the
        others. Its failure reaches every waiter, and each falls back as alone.
        """
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[np.ndarray]] = []
        new: dict[str, int] = {}  # key -> its row, for keys this request computes
        for i, key in enumerate(keys):
            fut = self._flights.get(key)
            if fut is None:
                fut = loop.create_future()
                fut.add_done_callback(_retrieve)
                self._flights[key] = fut
                new[key] = i
            elif key not in new:
                self.flight_joins += 1
            waits.append(fut)
        if new:
            own = rows if len(new) == len(rows) else rows[list(new.values())]
            self._spawn(self._fly, version, list(new), [self._flights[k] for k in new], own)
        if len(waits) == 1:
            return (await asyncio.shield(waits[0]))[None]
        return np.stack([await asyncio.shield(f) for f in waits])

    async def _fly(
        self,
        version: str,
        keys: list[str],
        futs: list[asyncio.Future[np.ndarray]],
        rows: np.ndarray,
    ) -> None:
        """One shared model call: answer every waiter of ``keys``, then write the cache."""
        try:
            out = await self._call_guarded(version, rows)
        except Exception as exc:  # noqa: BLE001 - every waiter gets it and decides alone
            self._land(keys, futs, exc=exc)
            return
        except BaseException:  # cancelled (shutdown): the waiters are cancelled too
            self._land(keys, futs, cancel=True)
            raise
        self._land(keys, futs, out=out)
        self.cache.set_many_background(list(zip(keys, out.tolist(), strict=True)))
        asyncio.get_running_loop().call_later(FLIGHT_LINGER_S, self._forget, keys, futs)

    def _forget(self, keys: list[str], futs: list[asyncio.Future[np.ndarray]]) -> None:
        for key, fut in zip(keys, futs, strict=True):
            if self._flights.get(key) is fut:
                del self._flights[key]

    def _land(
        self,
        keys: list[str],
        futs: list[asyncio.Future[np.ndarray]],
        *,
        out: np.ndarray | None = None,
        exc: Exception | None = None,
        cancel: bool = False,
    ) -> None:
        if out is None:  # a failed flight is forgotten at once: the next request tries anew
            self._forget(keys, futs)
        for j, fut in enumerate(futs):
            if fut.done():
                continue
            if cancel:
                fut.cancel()
            elif exc is not None:
                fut.set_exception(exc)
            else:
                assert out is not None
                fut.set_result(out[j])

    async def _call_guarded(self, version: str, rows: np.ndarray) -> np.ndarray:
        breaker = self.breakers[version]
        if not breaker.allow():
            self.stats[version].rejected_by_breaker += 1
            self.recorder.arm_error(version, "circuit_open")
            raise UpstreamError(f"circuit open for {version}", reason="circuit_open")
        if breaker.state is BreakerState.HALF_OPEN and version != self.baseline:
            # This caller was admitted as the probe. The probe goes to the candidate in
            # the background with the caller's rows, and the caller is answered by the
            # baseline at once: no client waits on an arm that was failing (a slow arm
            # would otherwise cost one client a full timeout per cool-down). The
            # baseline has nobody to fall back to, so its own probe stays in line.
            self._spawn(self._probe, version, rows)
            self.stats[version].probes += 1
            self.stats[version].rejected_by_breaker += 1
            self.recorder.arm_error(version, "circuit_open")
            raise UpstreamError(f"circuit half-open for {version}, probing", reason="circuit_open")
        return await self._call_recorded(version, rows)

    async def _call_recorded(self, version: str, rows: np.ndarray) -> np.ndarray:
        breaker = self.breakers[version]
        try:
            out = await self.call(version, rows, self.timeouts[version])
        except UpstreamError as exc:
            breaker.record_failure()
            self.stats[version].failures += 1
            self.recorder.arm_error(version, exc.reason)
            raise
        breaker.record_success()
        return out

    async def _probe(self, version: str, rows: np.ndarray) -> None:
        """A half-open breaker's probe: its outcome closes or re-opens the circuit."""
        with contextlib.suppress(UpstreamError):
            await self._call_recorded(version, rows)
