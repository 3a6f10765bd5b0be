"""Variant (a): the per-request FastAPI + uvicorn server of typical deployment guides.

A pydantic request model, the model loaded once at start, one ``predict`` per
request (no batching), one uvicorn worker. It serves the very same registered
v1 artifact as the platform, as a user would: ``joblib.load`` (after the
registry's sha256 check) and the estimator's own ``predict_proba``, not
abserve's backend (``benchmarks/artifact.py``). Access logs are off, which only
makes this baseline faster.

Run as ``python -m benchmarks.naive_server --registry DIR --port N``; the bench
starts it as a subprocess and stops it by PID.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["PredictRequest", "create_app", "main"]


class PredictRequest(BaseModel):
    features: list[list[float]]


def create_app(registry_root: str, model: str = "activity", version: str = "v1") -> FastAPI:
    from benchmarks.artifact import load_estimator

    estimator, labels = load_estimator(registry_root, model, version)
    app = FastAPI(title="naive")

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        x = np.asarray(request.features, dtype=np.float32)[None, ...]
        probs = estimator.predict_proba(x)[0]
        return {
            "label": labels[int(np.argmax(probs))],
            "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
            "version": version,
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True)
    p.add_argument("--model", default="activity")
    p.add_argument("--version", default="v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    app = create_app(args.registry, args.model, args.version)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
