"""TensorFlow / Keras adapter: ``.keras`` files only, loaded with ``safe_mode=True``.

safe_mode refuses Lambda layers and other arbitrary code in the file; legacy
SavedModel and HDF5 files are refused outright.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import BaseBackend
from models.registry import Manifest
from serve.errors import ArtifactError

__all__ = ["TensorflowBackend"]

log = logging.getLogger(__name__)


def _import_tf(num_threads: int) -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if num_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(num_threads)
        except RuntimeError:
            # The runtime is already initialized in this process; keep its pools.
            pass
    return tf, keras


class TensorflowBackend(BaseBackend):
    framework = "tensorflow"

    def _load(self, manifest: Manifest, artifact: Path) -> None:
        if artifact.suffix.lower() != ".keras":
            raise ArtifactError(
                f"only Keras v3 .keras files are served, got {artifact.name!r}; "
                "save the model with model.save('model.keras') and re-register it"
            )
        tf, keras = _import_tf(self.num_threads)
        if self.precision != "fp32":
            log.warning("precision %s is not applied to keras models; using fp32", self.precision)
            self.precision = "fp32"
        gpus = tf.config.list_physical_devices("GPU")
        if self.device.startswith("cuda") and not gpus:
            log.warning("device %s requested but no GPU is visible; using cpu", self.device)
            self.device = "cpu"
        elif self.device == "auto":
            self.device = "cuda" if gpus else "cpu"
        self._tf_device = "/GPU:0" if self.device.startswith("cuda") else "/CPU:0"
        try:
            with tf.device(self._tf_device):
                self._model = keras.models.load_model(artifact, safe_mode=True, compile=False)
        except Exception as exc:
            raise ArtifactError(f"cannot load keras model {artifact}: {exc}") from exc
        self._tf = tf

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        # Calling the model directly is much faster than model.predict for small batches.
        with self._tf.device(self._tf_device):
            out = self._model(batch, training=False)
        if isinstance(out, list | tuple | dict):
            raise ArtifactError("the keras model must have exactly one output")
        return np.asarray(out)
