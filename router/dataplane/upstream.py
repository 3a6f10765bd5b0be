"""The data plane's one door to Ray: handle calls, Ray's exceptions, Ray's internals.

Everything the router reads from Ray that is not a plain value goes through
this module, so a Ray upgrade that moves something breaks here and in
tests/unit/test_upstream.py, not across the router:

- ``RAY_ERRORS``: every exception class that ``ray.serve.exceptions`` and
  ``ray.exceptions`` define, mapped to our ``UpstreamError`` reason (httpx's
  ``HTTPCORE_EXC_MAP`` style). The unit test fails when Ray grows a class
  that is not in the table, so a new failure mode is decided on, not defaulted.
- ``translate(exc)``: a handle call's exception -> ours.
- ``RayRuntime``: replica counts behind a handle, this replica's id and the
  request id, the only reads of Ray's private attributes.
- ``Arms``: the model versions' handles (predict, readiness, stats, the
  in-flight limit per version from its replica count).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from router.dataplane.fallback import BreakerState, CircuitBreaker
from serve.config import BreakerConfig, ModelConfig
from serve.errors import AbserveError, ArmBusy, InvalidInput, UpstreamError

__all__ = ["RAY_ERRORS", "Arms", "Colocated", "RayRuntime", "call", "translate", "unwrap"]

log = logging.getLogger("ray.serve")

# (module, class name) -> (UpstreamError.reason, message). Reasons:
# timeout, backpressure, unavailable (the arm cannot take calls now: the
# breaker counts it and the baseline answers), cancelled, error (anything else).
_UNAVAILABLE = ("unavailable", "the arm is unavailable")
_ERROR = ("error", "the arm failed")
RAY_ERRORS: dict[tuple[str, str], tuple[str, str]] = {
    ("ray.serve.exceptions", "BackPressureError"): ("backpressure", "the arm is backpressured"),
    ("ray.serve.exceptions", "DeploymentUnavailableError"): _UNAVAILABLE,
    ("ray.serve.exceptions", "ReplicaUnavailableError"): _UNAVAILABLE,
    ("ray.serve.exceptions", "RequestCancelledError"): ("cancelled", "the arm call was cancelled"),
    ("ray.serve.exceptions", "gRPCStatusError"): _ERROR,
    ("ray.serve.exceptions", "RayServeException"): _ERROR,
    ("ray.exceptions", "ActorDiedError"): _UNAVAILABLE,
    ("ray.exceptions", "ActorUnavailableError"): _UNAVAILABLE,
    ("ray.exceptions", "RayActorError"): _UNAVAILABLE,
    ("ray.exceptions", "ActorUnschedulableError"): _UNAVAILABLE,
    ("ray.exceptions", "ActorPlacementGroupRemoved"): _UNAVAILABLE,
    ("ray.exceptions", "ActorHandleNotFoundError"): _UNAVAILABLE,
    ("ray.exceptions", "NodeDiedError"): _UNAVAILABLE,
    ("ray.exceptions", "LocalRayletDiedError"): _UNAVAILABLE,
    ("ray.exceptions", "WorkerCrashedError"): _UNAVAILABLE,
    ("ray.exceptions", "PendingCallsLimitExceeded"): ("backpressure", "the arm is backpressured"),
    ("ray.exceptions", "GetTimeoutError"): ("timeout", "the arm timed out"),
    ("ray.exceptions", "RayChannelTimeoutError"): ("timeout", "the arm timed out"),
    ("ray.exceptions", "TaskCancelledError"): ("cancelled", "the arm call was cancelled"),
    **{
        ("ray.exceptions", name): _ERROR
        for name in (
            "RayError", "CrossLanguageError", "RayTaskError", "RaySystemError",
            "AuthenticationError", "UserCodeException", "ObjectStoreFullError",
            "OutOfDiskError", "OutOfMemoryError", "ObjectLostError", "ObjectFetchTimedOutError",
            "RpcError", "ReferenceCountingAssertionError", "ObjectFreedError", "OwnerDiedError",
            "ObjectReconstructionFailedError", "PlasmaObjectNotAvailable", "AsyncioActorExit",
            "RuntimeEnvSetupError", "TaskPlacementGroupRemoved", "TaskUnschedulableError",
            "ObjectRefStreamEndOfStreamError", "StreamingGeneratorReplayInconsistentError",
            "OufOfBandObjectRefSerializationException", "RayChannelError",
            "RayCgraphCapacityExceeded", "RayDirectTransportError", "UnserializableException",
            "ActorAlreadyExistsError",
        )
    },
}


def unwrap(exc: BaseException) -> BaseException:
    """Our own error raised in another replica arrives wrapped in a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, AbserveError) else exc


def _row(exc: BaseException) -> tuple[str, str] | None:
    for cls in type(exc).__mro__:  # the most specific class in the table wins
        row = RAY_ERRORS.get((cls.__module__, cls.__name__))
        if row is not None:
            return row
    return None


def translate(exc: BaseException) -> BaseException:
    """A handle call's exception -> ours. Our InvalidInput passes through as it is."""
    inner = unwrap(exc)
    if isinstance(inner, InvalidInput):
        return inner
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) and _row(exc) is None:
        return UpstreamError("the arm timed out", reason="timeout")
    reason, message = _row(exc) or _ERROR
    if reason == "error":
        message = f"{message}: {type(exc).__name__}"
    return UpstreamError(message, reason=reason)


async def call(response: Any, timeout_s: float | None) -> Any:
    """Await a DeploymentResponse with a timeout; on timeout the call is cancelled.

    DeploymentResponse is awaitable but not a coroutine, and wait_for wants one.
    Raises Ray's own exceptions: callers ``translate`` them where they decide.
    """

    async def result() -> Any:
        return await response

    try:
        return await asyncio.wait_for(result(), timeout_s)
    except TimeoutError:
        response.cancel()
        raise


class RayRuntime:
    """What the router reads of Ray's live state, in one small adapter.

    A fake with the same three methods stands in for it in the HTTP app's
    unit tests, which run without Ray.
    """

    def running_replicas(self, handle: Any) -> int | None:
        """Replicas a handle can send to now; None if not known (before its first call).

        Serve 2.60 keeps the count inside the handle's request router, with no
        public getter; if a Ray upgrade moves it, this says None and the caller
        uses the config's count (tests/integration/test_batching.py checks it is found).
        """
        try:
            router: Any = handle._router  # noqa: SLF001
            n = len(router._asyncio_router.request_router.curr_replicas)  # noqa: SLF001
        except Exception:  # noqa: BLE001 - the count only shapes batches
            return None
        return n or None

    def replica_id(self) -> str:
        from ray import serve

        return str(serve.get_replica_context().replica_tag)

    def request_id(self) -> str:
        """Serve's own request id: the proxy's X-Request-Id header and log lines carry it."""
        from ray.serve import context

        rid = context._get_serve_request_context().request_id  # noqa: SLF001
        return rid or uuid.uuid4().hex


class Colocated(Protocol):
    """deployments/colocated.py ColocatedModel: a version served inside this replica."""

    @property
    def busy(self) -> bool: ...

    async def predict(self, batch: np.ndarray, timeout_s: float) -> np.ndarray: ...

    def stats(self) -> dict[str, Any]: ...


class Arms:
    """The model versions behind their Serve handles: predict, readiness, stats, replica counts.

    ``predict`` is the ``call`` that ``RouterCore`` and the batchers are given;
    it raises only our errors (``translate``).

    A version in ``colocated`` is served by its copy in this replica first. A
    busy copy (its one thread holds another call) hands the call to the version's
    own deployment. A copy that fails or times out is the arm's failure, exactly
    as a remote arm's (the core counts it, its breaker sees it, the baseline
    answers), except for the baseline itself (``retry_on_deployment``), whose
    deployment then answers the same call: the baseline has nobody to fall back
    to. After
    ``breaker.failure_threshold`` consecutive failures of the copy, calls go to
    the deployment alone for ``breaker.cooldown_s``, then the copy is tried again.
    """

    def __init__(
        self,
        handles: Mapping[str, Any],
        runtime: RayRuntime,
        models: Sequence[ModelConfig],
        in_flight_per_replica: int,
        *,
        colocated: Mapping[str, Colocated] | None = None,
        breaker: BreakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handles = dict(handles)
        self._runtime = runtime
        self._models = {m.version: m for m in models}
        self._in_flight_per_replica = in_flight_per_replica
        self._predict_handles: dict[str, Any] = {}
        self.colocated = dict(colocated or {})
        self._clock = clock
        b = breaker or BreakerConfig()
        self._local_breakers = {
            v: CircuitBreaker(b.failure_threshold, b.cooldown_s, clock) for v in self.colocated
        }
        self.remote_after_local = {v: 0 for v in self.colocated}  # after a failed copy
        self.spilled = {v: 0 for v in self.colocated}  # while the copy was busy
        # Which versions' copies are backed by their deployment when they fail: the router
        # sets it to "the baseline" (router/ingress.py); every version until then.
        self.retry_on_deployment: Callable[[str], bool] = lambda version: True
        # True while the router sheds load (router/ingress.py: admission at its limit).
        self.overloaded: Callable[[], bool] = lambda: False
        self.spilled_overload = {v: 0 for v in self.colocated}

    @property
    def versions(self) -> list[str]:
        return sorted(self._handles)

    async def predict(self, version: str, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        local = self.colocated.get(version)
        if local is not None and self.overloaded():
            # Shedding needs the router's CPU: its model work goes to the deployment.
            self.spilled_overload[version] += 1
            local = None
        if local is not None:
            breaker = self._local_breakers[version]
            if breaker.allow():
                started = self._clock()
                try:
                    out = await local.predict(batch, timeout_s)
                except ArmBusy:
                    self.spilled[version] += 1  # the deployment takes it, nothing failed
                except UpstreamError:
                    breaker.record_failure()
                    if not self.retry_on_deployment(version):
                        raise  # the arm failed, as a remote arm's failure: the core decides
                    # The baseline has no one to fall back to: its deployment answers, in
                    # what is left of the timeout, or in a whole one after a timed-out copy.
                    left = timeout_s - (self._clock() - started)
                    timeout_s = left if left > 0 else timeout_s
                    self.remote_after_local[version] += 1
                else:
                    breaker.record_success()
                    return out
        return await self._predict_remote(version, batch, timeout_s)

    async def _predict_remote(
        self, version: str, batch: np.ndarray, timeout_s: float
    ) -> np.ndarray:
        handle = self._predict_handles.get(version)
        if handle is None:  # made once, on the event loop (``handle.predict`` builds a new one)
            handle = self._predict_handles[version] = self._handles[version].options(
                method_name="predict"
            )
        response = handle.remote(batch)
        try:
            return await call(response, timeout_s)
        except Exception as exc:  # noqa: BLE001 - translated at this boundary, by table
            translated = translate(exc)
            if isinstance(translated, UpstreamError) and translated.reason == "error":
                log.warning("arm %s failed: %s", version, str(exc).splitlines()[-1][:300])
            raise translated from None

    async def ready(self, version: str, timeout_s: float) -> bool:
        """The version's replica answers its readiness call in time (a colocated copy
        that can take calls counts: it answers for the version)."""
        local = self.colocated.get(version)
        if local is not None and not local.busy \
                and self._local_breakers[version].state is BreakerState.CLOSED:
            return True
        try:
            return bool(await call(self._handles[version].ready.remote(), timeout_s))
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason
            log.warning("readiness probe of %s failed: %r", version, exc)
            return False

    async def stats(self, version: str, timeout_s: float) -> dict[str, Any] | None:
        """One replica's own counters; None when the version does not answer in time."""
        try:
            remote: dict[str, Any] | None = dict(
                await call(self._handles[version].stats.remote(), timeout_s))
        except Exception:  # noqa: BLE001 - a down version shows as null
            remote = None
        local = self.colocated.get(version)
        if local is None:
            return remote
        return {**(remote or {}), "colocated_copy": {
            **local.stats(), "breaker": self._local_breakers[version].state.value,
            "remote_after_local": self.remote_after_local[version],
            "spilled_while_busy": self.spilled[version],
            "spilled_while_shedding": self.spilled_overload[version]}}

    def running_replicas(self, version: str) -> int | None:
        return self._runtime.running_replicas(self._handles[version])

    def hop_limit(self, version: str) -> int:
        """Calls out at once to a version: batch_in_flight_per_replica per running replica.

        Until the handle knows its replicas (before the first call) the config's
        count stands in: num_replicas, or with autoscaling the initial replicas.
        A colocated version takes one call at a time (its one thread); the rest wait
        in the batcher and go as one merged call.
        """
        local = self.colocated.get(version)
        if local is not None and not local.busy \
                and self._local_breakers[version].state is BreakerState.CLOSED:
            return 1
        n = self.running_replicas(version)
        if n is None:
            m = self._models[version]
            auto = m.autoscaling
            n = m.num_replicas if auto is None else auto.initial_replicas or auto.min_replicas
        return self._in_flight_per_replica * n
