"""scikit-learn adapter: a joblib file of any fitted estimator with predict_proba.

joblib is pickle, so ``BaseBackend.load`` re-checks the sha256 against the
manifest before ``joblib.load`` runs.

Forests (RandomForest / ExtraTrees, alone or ending a Pipeline) are served by the
exact tree loop of ``models.forest`` once it has matched the estimator's own
``predict_proba`` on the registered verification windows (about 20x faster per call
for the demo's 50 trees); anything else, or a forest that fails the check, by
``predict_proba``. ``inference_path`` says which serves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import BaseBackend
from models.forest import TREE_LOOP, choose_path, needs_flatten, set_single_threaded
from models.registry import Manifest
from models.verify import verification_windows
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
    inference_path: str | None = None  # "forest-tree-loop" or "predict_proba", once loaded
    inference_path_max_dp: float | None = None
    inference_path_reason: str = ""

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
        set_single_threaded(est)
        self._flatten = self._needs_flatten(est, manifest)
        self._est = est
        self._predict_proba = self._choose_path(manifest, artifact, est)

    def _choose_path(self, manifest: Manifest, artifact: Path, est: Any) -> Any:
        """Verify the fast path again here, on the registered windows: the path that
        serves is the one verified in this process, whatever the manifest says."""
        windows, source = verification_windows(manifest, artifact.parent)
        x = windows.reshape(len(windows), -1) if self._flatten else windows
        choice = choose_path(est, x)
        self.inference_path = choice.name
        self.inference_path_max_dp = choice.max_dp
        self.inference_path_reason = choice.reason
        where = f"{manifest.name} {manifest.version}"
        if choice.name == TREE_LOOP:
            log.info(
                "%s serves through %s (max |dp| %.3g against predict_proba on %d %s windows)",
                where, choice.name, choice.max_dp or 0.0, choice.rows, source,
            )
        elif choice.max_dp is not None or "failed" in choice.reason:
            log.warning("%s: %s; serving predict_proba", where, choice.reason)
        else:
            log.info("%s serves through predict_proba (%s)", where, choice.reason)
        recorded = manifest.extra.get("inference_path")
        if recorded is not None and recorded != choice.name:
            log.warning(
                "%s was registered to serve through %s but verifies for %s here",
                where, recorded, choice.name,
            )
        return choice.predict_proba

    @staticmethod
    def _needs_flatten(est: Any, manifest: Manifest) -> bool:
        """Flatten each instance for estimators fitted on 2-D rows of prod(input_shape)."""
        return needs_flatten(est, manifest.input_shape, manifest.extra)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(batch.shape[0], -1) if self._flatten else batch
        proba = np.asarray(self._predict_proba(x), dtype=np.float64)
        if proba.ndim != 2 or proba.shape != (batch.shape[0], len(self._columns)):
            raise ArtifactError(f"predict_proba returned shape {proba.shape}")
        if self._identity:
            return proba
        out = np.zeros((batch.shape[0], self.manifest.n_classes), dtype=np.float64)
        out[:, self._columns] = proba
        return out
