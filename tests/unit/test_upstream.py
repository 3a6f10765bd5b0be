"""router/dataplane/upstream.py: the table of Ray's exceptions and the translation.

The completeness test fails when Ray grows an exception class that the table
does not name (httpx's tests/test_exceptions.py does the same for httpcore), so
a new failure mode is decided on, not defaulted.
"""

from __future__ import annotations

import asyncio
import inspect
from types import ModuleType

import pytest
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions

from router.dataplane.upstream import RAY_ERRORS, call, translate, unwrap
from serve.errors import InvalidInput, NotFound, UpstreamError


def _defined(module: ModuleType) -> set[tuple[str, str]]:
    return {
        (module.__name__, name)
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__ == module.__name__
    }


@pytest.mark.parametrize("module", [serve_exceptions, ray_exceptions], ids=lambda m: m.__name__)
def test_every_ray_exception_is_in_the_table(module: ModuleType) -> None:
    missing = _defined(module) - set(RAY_ERRORS)
    assert not missing, f"add these to RAY_ERRORS: {sorted(missing)}"


def test_the_table_names_only_classes_that_exist() -> None:
    defined = _defined(serve_exceptions) | _defined(ray_exceptions)
    assert set(RAY_ERRORS) <= defined, sorted(set(RAY_ERRORS) - defined)


def _reason(exc: BaseException) -> str:
    out = translate(exc)
    assert isinstance(out, UpstreamError)
    return out.reason


def test_timeouts() -> None:
    assert _reason(TimeoutError()) == "timeout"
    assert _reason(ray_exceptions.GetTimeoutError()) == "timeout"


def test_backpressure() -> None:
    assert _reason(serve_exceptions.BackPressureError(num_queued_requests=3,
                                                      max_queued_requests=2)) == "backpressure"


def test_unavailable() -> None:
    assert _reason(serve_exceptions.DeploymentUnavailableError(None)) == "unavailable"  # type: ignore[arg-type]
    assert _reason(serve_exceptions.ReplicaUnavailableError("r1")) == "unavailable"
    assert _reason(ray_exceptions.ActorDiedError()) == "unavailable"
    assert _reason(ray_exceptions.ActorUnavailableError("gone", b"\0" * 16)) == "unavailable"
    assert _reason(ray_exceptions.RayActorError()) == "unavailable"


def test_cancelled() -> None:
    assert _reason(serve_exceptions.RequestCancelledError("r1")) == "cancelled"


class _Wrapped(Exception):
    """Shaped like RayTaskError: our error from another replica as ``.cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def test_our_invalid_input_passes_through_unwrapped() -> None:
    inner = InvalidInput("bad shape", field="instances")
    assert translate(_Wrapped(inner)) is inner
    assert translate(inner) is inner


def test_unwrap_keeps_other_abserve_errors_and_leaves_foreign_causes() -> None:
    inner = NotFound("no such request")
    assert unwrap(_Wrapped(inner)) is inner
    foreign = _Wrapped(ValueError("x"))
    assert unwrap(foreign) is foreign


def test_unknown_exceptions_are_errors_named_by_class() -> None:
    out = translate(KeyError("x"))
    assert isinstance(out, UpstreamError)
    assert out.reason == "error"
    assert "KeyError" in str(out)
    assert _reason(ray_exceptions.RayTaskError("f", "tb", ValueError("x"))) == "error"


class _Response:
    """A DeploymentResponse stand-in: awaitable, cancellable."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.cancelled = False

    def __await__(self):  # type: ignore[no-untyped-def]
        return asyncio.sleep(self.delay_s, result="done").__await__()

    def cancel(self) -> None:
        self.cancelled = True


def test_call_returns_the_result_and_cancels_on_timeout() -> None:
    async def run() -> None:
        fast = _Response(0)
        assert await call(fast, 1.0) == "done"
        assert not fast.cancelled
        slow = _Response(1.0)
        with pytest.raises(TimeoutError):
            await call(slow, 0.01)
        assert slow.cancelled

    asyncio.run(run())
