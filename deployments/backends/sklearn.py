"""scikit-learn adapter: a joblib file of any fitted estimator with predict_proba.

joblib is pickle, so ``BaseBackend.load`` re-checks the sha256 against the
manifest before ``joblib.load`` runs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import BaseBackend
from models.registry import Manifest
from serve.errors import ArtifactError

__all__ = ["SklearnBackend"]

log = logging.getLogger(__name__)


def _class_columns(classes: Any, labels: tuple[str, ...]) -> np.ndarray:
    """Column in the manifest's label order for each of the estimator's ``classes_``."""
    cols = []
    for c in list(classes):
        if isinstance(c, str | np.str_):
            if c not in labels:
                raise ArtifactError(
                    f"estimator class {c!r} is not among the manifest's class_labels {list(labels)}"
                )
            cols.append(labels.index(str(c)))
        elif isinstance(c, int | np.integer) and not isinstance(c, bool | np.bool_):
            if not 0 <= int(c) < len(labels):
                raise ArtifactError(
                    f"estimator class {int(c)} does not index the {len(labels)} class_labels"
                )
            cols.append(int(c))
        else:
            raise ArtifactError(
                f"estimator classes must be label strings or label indices, got {c!r}"
            )
    if len(set(cols)) != len(cols):
        raise ArtifactError("estimator classes_ map twice onto the same class label")
    return np.asarray(cols, dtype=np.intp)


class SklearnBackend(BaseBackend):
    framework = "sklearn"

    def _load(self, manifest: Manifest, artifact: Path) -> None:
        import joblib

        if self.device != "cpu" or self.precision != "fp32":
            log.info(
                "scikit-learn runs on cpu in fp32; ignoring %s/%s", self.device, self.precision
            )
            self.device, self.precision = "cpu", "fp32"  # what really runs, for stats()
        try:
            est = joblib.load(artifact)
        except Exception as exc:  # any unpickling failure is an artifact problem
            raise ArtifactError(f"cannot load scikit-learn artifact {artifact}: {exc}") from exc
        if not hasattr(est, "predict_proba"):
            raise ArtifactError(
                f"{type(est).__name__} has no predict_proba; register a classifier that has one"
            )
        classes = getattr(est, "classes_", None)
        if classes is None:
            raise ArtifactError(f"{type(est).__name__} is not fitted (no classes_)")
        self._columns = _class_columns(classes, manifest.class_labels)
        self._identity = np.array_equal(self._columns, np.arange(manifest.n_classes))
        # Replicas share few cores: no nested parallelism per request.
        params = est.get_params(deep=True) if hasattr(est, "get_params") else {}
        n_jobs = {k: 1 for k in params if k == "n_jobs" or k.endswith("__n_jobs")}
        if n_jobs:
            est.set_params(**n_jobs)
        self._flatten = self._needs_flatten(est, manifest)
        self._est = est

    @staticmethod
    def _needs_flatten(est: Any, manifest: Manifest) -> bool:
        """Flatten each instance for estimators fitted on 2-D rows of prod(input_shape)."""
        if "flatten" in manifest.extra:
            return bool(manifest.extra["flatten"])
        if len(manifest.input_shape) < 2:
            return False
        return getattr(est, "n_features_in_", None) == math.prod(manifest.input_shape)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(batch.shape[0], -1) if self._flatten else batch
        proba = np.asarray(self._est.predict_proba(x), dtype=np.float64)
        if proba.ndim != 2 or proba.shape != (batch.shape[0], len(self._columns)):
            raise ArtifactError(f"predict_proba returned shape {proba.shape}")
        if self._identity:
            return proba
        out = np.zeros((batch.shape[0], self.manifest.n_classes), dtype=np.float64)
        out[:, self._columns] = proba
        return out
