"""scikit-learn adapter: a joblib file of any fitted estimator, read by the manifest's kind.

joblib is pickle, so ``BaseBackend.load`` re-checks the sha256 against the
manifest before ``joblib.load`` runs.

- multiclass: ``predict_proba``, its columns mapped onto the manifest's class_labels;
- binary: ``predict_proba[:, positive]`` of an estimator with exactly two classes_;
- regression: ``predict`` (one value, or one per named output) of a non-classifier.

A tabular model (manifest ``input_schema``) gets its float64 rows as the pandas DataFrame it
was trained on (``Schema.to_frame``), so a ColumnTransformer works unchanged.

Forest classifiers (RandomForest / ExtraTrees, alone or ending a Pipeline) are served by
the exact tree loop of ``models.forest`` once it has matched the estimator's own
``predict_proba`` on the registered verification windows (about 20x faster per call
for the demo's 50 trees); anything else, or a forest that fails the check, by
``predict_proba`` (``predict`` for regression, which the tree loop does not serve).
``inference_path`` says which serves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import BaseBackend
from models.forest import (
    TREE_LOOP,
    choose_path,
    class_columns,
    needs_flatten,
    regression_path,
    set_single_threaded,
)
from models.kinds import BINARY, REGRESSION
from models.registry import Manifest
from models.verify import verification_windows
from serve.errors import ArtifactError

__all__ = ["SklearnBackend"]

log = logging.getLogger(__name__)


class SklearnBackend(BaseBackend):
    framework = "sklearn"
    # "forest-tree-loop", "predict_proba" or "predict" (regression), once loaded
    inference_path: str | None = None
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
        self._kind = manifest.kind
        self._schema: Any = None
        if manifest.input_schema is not None:
            from models.schema import Schema

            self._schema = Schema.parse(manifest.input_schema)
        if manifest.kind == REGRESSION:
            self._load_regressor(est)
        else:
            self._load_classifier(est, manifest)
        # Replicas share few cores: no nested parallelism per request.
        set_single_threaded(est)
        self._flatten = self._schema is None and self._needs_flatten(est, manifest)
        self._est = est
        # predict_proba, the tree loop, or predict (regression): the verified call.
        self._predict_proba = self._choose_path(manifest, artifact, est)

    def _load_regressor(self, est: Any) -> None:
        from sklearn.base import is_classifier

        if not hasattr(est, "predict"):
            raise ArtifactError(f"{type(est).__name__} has no predict; a regression model needs it")
        if is_classifier(est):
            raise ArtifactError(
                f"{type(est).__name__} is a classifier; register it as multiclass or binary, "
                "not regression (check the manifest's kind)"
            )

    def _load_classifier(self, est: Any, manifest: Manifest) -> None:
        if not hasattr(est, "predict_proba"):
            raise ArtifactError(
                f"{type(est).__name__} has no predict_proba; a {manifest.kind} model needs a "
                "classifier that has one (check the manifest's kind)"
            )
        classes = getattr(est, "classes_", None)
        if classes is None:
            raise ArtifactError(f"{type(est).__name__} is not fitted (no classes_)")
        if manifest.kind == BINARY and len(classes) != 2:
            raise ArtifactError(
                f"{type(est).__name__} has {len(classes)} classes_, a binary model exactly 2 "
                "(check the manifest's kind)"
            )
        self._columns = class_columns(classes, manifest.class_labels)
        self._identity = np.array_equal(self._columns, np.arange(manifest.n_classes))
        # Binary: the estimator's column of class_labels[1], the positive class.
        self._positive = int(np.flatnonzero(self._columns == 1)[0]) if (
            manifest.kind == BINARY) else 0

    def _input(self, batch: np.ndarray) -> Any:
        """What the estimator was fitted on: a DataFrame of the schema's columns, the
        flattened rows, or the batch as it is."""
        if self._schema is not None:
            return self._schema.to_frame(batch)
        return batch.reshape(batch.shape[0], -1) if self._flatten else batch

    def _choose_path(self, manifest: Manifest, artifact: Path, est: Any) -> Any:
        """Verify the fast path again here, on the registered windows: the path that
        serves is the one verified in this process, whatever the manifest says."""
        windows, source = verification_windows(manifest, artifact.parent)
        if manifest.kind == REGRESSION:
            choice = regression_path(est)
        else:
            choice = choose_path(est, self._input(windows))
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
            log.warning("%s: %s; serving %s", where, choice.reason, choice.name)
        else:
            log.info("%s serves through %s (%s)", where, choice.name, choice.reason)
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
        n = batch.shape[0]
        raw = np.asarray(self._predict_proba(self._input(batch)), dtype=np.float64)
        if self._kind == REGRESSION:
            return raw  # (n,) or (n, outputs): to_outputs checks the width
        if raw.ndim != 2 or raw.shape != (n, len(self._columns)):
            raise ArtifactError(f"predict_proba returned shape {raw.shape}")
        if self._kind == BINARY:
            return raw[:, self._positive]
        if self._identity:
            return raw
        out = np.zeros((n, self.manifest.n_classes), dtype=np.float64)
        out[:, self._columns] = raw
        return out
