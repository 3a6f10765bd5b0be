"""The generic model deployment: one Ray Serve deployment per model version.

Every call carries a batch (n, *input_shape) (float64 rows (n, len(input_schema)) for a
tabular model) and gets (n, manifest.width) float32 outputs of the manifest's kind back
(probabilities, a binary score, regression values). Concurrent calls are merged by
``@serve.batch`` into one backend call, sized in *rows* (``batch_size_fn``), so a
/predict/batch of 40 and two single predictions share one forward pass up to ``max_batch_size``
rows. A batch waits up to ``batch_wait_timeout_s`` to fill only while calls
arrive closer together than that (``AdaptiveWait``): a sparse call runs at
once. The backend runs in a worker thread so the replica's event loop keeps
collecting the next batch while this one computes. An invalid item fails only
its own caller: items are validated before they are merged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.backends import check_batch, load_backend
from deployments.backends.base import expected_shape
from models.registry import Registry
from models.verify import window_dtype
from router.dataplane.adaptive import AdaptiveWait
from serve.config import ModelConfig
from serve.errors import InvalidInput
from serve.telemetry import MODEL_METRICS, ray_metric_factory

__all__ = ["ModelDeployment", "ModelReplica"]

log = logging.getLogger("ray.serve")


BATCH_ROWS = MODEL_METRICS["abserve_model_batch_rows"]
PREDICT_MS = MODEL_METRICS["abserve_model_predict_ms"]


def _rows(items: list[Any]) -> int:
    return sum(len(x) for x in items)


class ModelReplica:
    """One replica of one model version: batched predict, stats, health.

    Plain class: ``ModelDeployment`` below is the production deployment, and
    drills bind a subclass that can be told to fail (benchmarks/faults.py).
    Every setting comes from the version's ``ModelConfig`` (serve/app.py
    passes it); nothing here has a default of its own.
    """

    def __init__(
        self, registry_root: str, model: str, settings: dict[str, Any], *,
        colocated: bool = False,
    ) -> None:
        """``colocated``: built inside a router replica (deployments/colocated.py), which
        calls ``compute`` itself; Serve's batch queue is not used there."""
        cfg = ModelConfig.model_validate(settings)
        version = cfg.version
        registry = Registry(registry_root)
        self.manifest = registry.manifest(model, version)
        artifact = registry.verified_artifact(self.manifest)
        device = "cuda" if cfg.num_gpus > 0 else "cpu"
        started = time.perf_counter()
        self.backend = load_backend(
            self.manifest, artifact, device=device, precision=cfg.precision
        )
        self.colocated = colocated
        self._predict_rows.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self._predict_rows.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            cfg.batch_wait_timeout_s
        )
        self._wait = AdaptiveWait(cfg.batch_wait_timeout_s, enabled=cfg.adaptive_batch_wait)
        self._wait_now = cfg.batch_wait_timeout_s
        self.input_shape = tuple(self.manifest.input_shape)
        self.calls = 0  # backend calls, for the batching tests and the bench
        self.rows = 0
        # All zeros is a valid row of every schema too (category 0, false, 0).
        self._probe = np.zeros((1, *expected_shape(self.manifest)),
                               dtype=window_dtype(self.manifest))
        # Once per replica, tags bound once: a record per backend call (a batch), not per row.
        self.batch_rows = ray_metric_factory(BATCH_ROWS)
        self.batch_rows.set_default_tags({"model": model, "version": version})
        self.predict_ms = ray_metric_factory(PREDICT_MS)
        self.predict_ms.set_default_tags({"model": model, "version": version})
        log.info(
            "loaded %s:%s (%s) in %.2fs on %s/%s%s",
            model,
            version,
            self.manifest.framework,
            time.perf_counter() - started,
            device,
            cfg.precision,
            " (colocated in the router)" if colocated else "",
        )

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        """The outputs for a batch; merged with concurrent callers' batches."""
        wait = self._wait.arrival()
        if wait != self._wait_now:  # read by Serve's batch queue when a batch starts
            self._predict_rows.set_batch_wait_timeout_s(wait)  # type: ignore[attr-defined]
            self._wait_now = wait
        result = await self._predict_rows(batch)
        if isinstance(result, Exception):
            raise result
        return result

    # Sized in rows; max_batch_size and the wait are set from the config in __init__.
    @serve.batch(batch_size_fn=_rows)
    async def _predict_rows(self, items: list[np.ndarray]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        good: list[int] = []
        for i, item in enumerate(items):
            try:
                # In the manifest's dtype: float64 tabular rows are not rounded to float32.
                items[i] = check_batch(item, self.manifest)
                good.append(i)
            except InvalidInput as exc:
                results[i] = exc
        if good:
            merged = np.concatenate([items[i] for i in good]) if len(good) > 1 else items[good[0]]
            out = await asyncio.to_thread(self.compute, merged)
            start = 0
            for i in good:
                n = len(items[i])
                results[i] = out[start : start + n]
                start += n
        return results

    def compute(self, batch: np.ndarray) -> np.ndarray:
        """One backend call on an already merged batch (blocking: a worker thread runs it).

        The remote path's batch queue and the router's colocated copy both call this, so
        both count and time their calls alike.
        """
        started = time.perf_counter()
        out = self.backend.predict(batch)
        self.predict_ms.observe((time.perf_counter() - started) * 1000.0)
        self.batch_rows.observe(len(batch))
        self.calls += 1
        self.rows += len(batch)
        return out

    def stats(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"version": self.manifest.version, "calls": self.calls, "rows": self.rows,
                "pid": os.getpid(), "node_id": ctx.get_node_id(),
                "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": getattr(self.backend, "device", None),
                "precision": getattr(self.backend, "precision", None),
                "inference_path": getattr(self.backend, "inference_path", None),
                "colocated": self.colocated}

    def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        """Fail (and let Serve replace the replica) when the model cannot predict."""
        out = self.backend.predict(self._probe)
        width = self.manifest.width
        if out.shape != (1, width) or not np.all(np.isfinite(out)):
            raise RuntimeError(
                f"health probe returned {out.shape}, not one finite row of {width} "
                f"({self.manifest.kind}) outputs"
            )


# No options here: serve/app.py sets every one from the config (.options), once.
ModelDeployment = serve.deployment(ModelReplica)
