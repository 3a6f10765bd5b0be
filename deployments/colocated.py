"""A model version served inside the router replica: one Ray hop instead of two.

A cache miss for a remote version crosses two Ray hops and two batching
stages (proxy -> router -> model replica). A colocated version is loaded by
the router replica itself, from the same registry entry and by the same
replica code (``ModelReplica.compute``: backend, metrics, counters), and its
calls run on a worker thread of the router's own: the router's ``HopBatcher``
already merges concurrent requests, so one call at a time in that thread is
all the batching it needs. Its Serve deployment stays: pins from other
routers, its own scaling, and the answer whenever the colocated copy cannot
give one (``router/dataplane/upstream.py`` ``Arms``).

What keeps a colocated model from taking the router down:

- the call runs in its own thread, never on the event loop, so a slow call
  delays no other arm and no other request's parsing or cache look-up;
- the caller waits at most its timeout; a call still running after that keeps
  the thread, and later calls are refused at once (``ArmBusy``) instead of
  queueing behind it, until it returns (the deployment answers them);
- any exception from the backend is our ``UpstreamError`` (the baseline
  answers, or for the baseline its own deployment), and a load failure at start
  leaves the version remote-only (``load_colocated``).

A crash of the process itself (a segfault in native code) is the one failure
this cannot contain: it ends the router replica, which Serve restarts. Keep
models whose native code is not trusted remote (``colocated: false``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deployments.backends.base import expected_shape
from models.registry import Manifest
from models.verify import window_dtype
from serve.config import ModelConfig
from serve.errors import ArmBusy, InvalidInput, UpstreamError

__all__ = [
    "ColocatedModel",
    "ColocationChoice",
    "choose_colocated",
    "load_colocated",
]

log = logging.getLogger("ray.serve")

# Frameworks colocated by default (`colocated: null`): importing them costs the router little.
AUTO_FRAMEWORKS = frozenset({"sklearn"})


class Replica(Protocol):
    """What a colocated copy needs of deployments/model.py's ModelReplica."""

    def compute(self, batch: np.ndarray) -> np.ndarray: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ColocationChoice:
    version: str
    colocated: bool
    reason: str


def choose_colocated(
    models: Sequence[ModelConfig],
    manifests: Mapping[str, Manifest],
    artifact_mb: Mapping[str, float],
    max_artifact_mb: float,
) -> list[ColocationChoice]:
    """Which versions the router serves itself, and why (pure: logged at start, in /stats)."""
    out = []
    for m in models:
        framework = manifests[m.version].framework
        size = artifact_mb.get(m.version, 0.0)
        if m.colocated is True:
            out.append(ColocationChoice(m.version, True, "colocated: true"))
        elif m.colocated is False:
            out.append(ColocationChoice(m.version, False, "colocated: false"))
        elif m.num_gpus > 0:
            out.append(ColocationChoice(m.version, False, "auto: the version asks for a GPU"))
        elif m.autoscaling is not None:
            out.append(ColocationChoice(
                m.version, False, "auto: the version autoscales on its own replicas' load"))
        elif m.resources:
            out.append(ColocationChoice(
                m.version, False, "auto: the version is placed by custom resources"))
        elif framework not in AUTO_FRAMEWORKS:
            out.append(ColocationChoice(
                m.version, False, f"auto: {framework} stays remote (set colocated: true)"))
        elif size > max_artifact_mb:
            out.append(ColocationChoice(
                m.version, False,
                f"auto: artifact {size:.0f} MB > colocate_max_artifact_mb {max_artifact_mb:g}"))
        else:
            out.append(ColocationChoice(m.version, True, f"auto: {framework}, {size:.1f} MB"))
    return out


class ColocatedModel:
    """One version's copy inside a router replica: ``predict`` with a timeout, off the loop."""

    def __init__(self, version: str, replica: Replica, *, max_busy: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``max_busy``: the largest share of time the copy computes. The copy shares the
        router's GIL with its event loop; computing back to back under load would starve
        the loop (parsing, the cache, shedding). After a call of d seconds the copy rests
        d * (1 - max_busy) / max_busy: the next call waits that long (asynchronously; the
        router's batcher meanwhile gathers the requests behind it into one call)."""
        self.version = version
        self.replica = replica
        self._clock = clock
        self._rest = (1.0 - max_busy) / max_busy if 0 < max_busy < 1 else 0.0
        self._free_at = 0.0
        # One thread: calls are merged before they get here, and a second thread would
        # only contend with the first (and with the event loop) for the same cores.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"colocated-{version}"
        )
        self._running: concurrent.futures.Future[np.ndarray] | None = None
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.timeouts = 0
        self.refused_busy = 0

    @property
    def busy(self) -> bool:
        """A call that outlived its caller's timeout still holds the thread."""
        running = self._running
        return running is not None and not running.done()

    async def predict(self, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        """The backend's ``(n, width)`` outputs; raises UpstreamError (or the caller's
        InvalidInput)."""
        rest = self._free_at - self._clock()
        if rest > 0:  # the batcher counts this call as in flight: the next batch grows
            await asyncio.sleep(rest)
        if self.busy:
            self.refused_busy += 1
            raise ArmBusy(f"colocated {self.version} is busy with another call")
        loop = asyncio.get_running_loop()
        started = self._clock()
        fut = self._executor.submit(self.replica.compute, batch)
        self._running = fut
        self.calls += 1
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(fut, loop=loop), timeout_s)
            now = self._clock()
            self._free_at = now + (now - started) * self._rest
            return out
        except TimeoutError:
            self.timeouts += 1
            raise UpstreamError(f"colocated {self.version} timed out", reason="timeout") from None
        except InvalidInput:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure is the arm's failure
            self.failures += 1
            log.warning("colocated %s failed: %s: %s", self.version, type(exc).__name__,
                        str(exc).splitlines()[0][:300] if str(exc) else "")
            raise UpstreamError(
                f"colocated {self.version} failed: {type(exc).__name__}", reason="error"
            ) from None

    def stats(self) -> dict[str, Any]:
        try:
            own = dict(self.replica.stats())
        except Exception:  # noqa: BLE001 - counters are best effort
            own = {}
        return {**own, "colocated_calls": self.calls, "colocated_failures": self.failures,
                "colocated_timeouts": self.timeouts, "colocated_refused_busy": self.refused_busy,
                "colocated_busy": self.busy}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def artifact_size_mb(registry_root: str, manifest: Manifest) -> float:
    path = Path(registry_root) / manifest.name / manifest.version / manifest.artifact
    try:
        return path.stat().st_size / 2**20
    except OSError:
        return 0.0


def load_colocated(
    registry_root: str,
    model: str,
    models: Sequence[ModelConfig],
    manifests: Mapping[str, Manifest],
    max_artifact_mb: float,
    replica_class: Callable[..., Replica],
    max_busy: float = 0.5,
) -> tuple[dict[str, ColocatedModel], list[ColocationChoice]]:
    """Load the chosen versions; one that fails to load stays remote (logged), the router
    starts anyway."""
    sizes = {v: artifact_size_mb(registry_root, mf) for v, mf in manifests.items()}
    choices = choose_colocated(models, manifests, sizes, max_artifact_mb)
    by_version = {m.version: m for m in models}
    loaded: dict[str, ColocatedModel] = {}
    final: list[ColocationChoice] = []
    for choice in choices:
        if not choice.colocated:
            final.append(choice)
            continue
        m = by_version[choice.version]
        try:
            replica = replica_class(registry_root, model, m.model_dump(mode="json"),
                                    colocated=True)
            manifest = manifests[m.version]
            replica.compute(np.zeros((1, *expected_shape(manifest)), dtype=window_dtype(manifest)))
        except Exception as exc:  # noqa: BLE001 - the deployment serves it instead
            log.error("colocated %s could not be loaded, it stays remote: %r", m.version, exc)
            final.append(ColocationChoice(m.version, False, f"load failed: {exc!r}"[:300]))
            continue
        loaded[m.version] = ColocatedModel(m.version, replica, max_busy=max_busy)
        final.append(choice)
    return loaded, final
