"""Variant (b): plain Ray Serve, the deployment a user would write from Serve's docs.

One deployment, the same v1 artifact (``joblib.load`` after the registry's
sha256 check, the estimator's own ``predict_proba``: not abserve's backend, see
``benchmarks/artifact.py``), ``@serve.batch`` (64, 5 ms), one replica
with the platform's v1 CPU share; it is its own ingress (raw Starlette
request, ``await request.json()``, a dict back), so there is no router hop, no
A/B split, no cache and no fallback. ``stats()`` counts backend calls, like the
platform's model deployment, so the report can show the mean batch size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request

__all__ = ["PLAIN_APP", "PLAIN_DEPLOYMENT", "PlainModel", "plain_app"]

PLAIN_APP = "plain"
PLAIN_DEPLOYMENT = "plain-model"


@serve.deployment(max_ongoing_requests=256)
class PlainModel:
    def __init__(self, registry_root: str, model: str, version: str) -> None:
        from benchmarks.artifact import load_estimator

        self.estimator, self.labels = load_estimator(registry_root, model, version)
        self.version = version
        self.calls = 0
        self.rows = 0

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict(self, items: list[np.ndarray]) -> list[np.ndarray]:
        out = self.estimator.predict_proba(np.stack(items))
        self.calls += 1
        self.rows += len(items)
        return list(out)

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        probs = await self._predict(np.asarray(body["features"], dtype=np.float32))
        return {
            "label": self.labels[int(np.argmax(probs))],
            "probabilities": {
                label: float(p) for label, p in zip(self.labels, probs, strict=True)
            },
            "version": self.version,
        }

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "calls": self.calls, "rows": self.rows}


def plain_app(registry_root: str, num_cpus: float, model: str = "activity",
              version: str = "v1") -> Any:
    return PlainModel.options(  # type: ignore[attr-defined]
        name=PLAIN_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": num_cpus}
    ).bind(registry_root, model, version)
