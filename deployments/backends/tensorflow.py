"""TensorFlow / Keras adapter: ``.keras`` files only, loaded with ``safe_mode=True``.

safe_mode refuses Lambda layers and other arbitrary code in the file; legacy
SavedModel and HDF5 files are refused outright.

On cpu the model's call is wrapped once in a ``tf.function`` (a graph traced for any
batch size, no XLA): calling a Keras model eagerly runs every op, and the GRU's every
time step, through Python, about 55 ms a call for the demo v3 against about 1 ms as
a graph, bitwise the same probabilities (benchmarks/model_paths.py; XLA is faster
still but compiles again for each new batch size and moved probabilities by 3e-6).
The graph serves only after matching the eager call on the verification windows;
otherwise, and on GPU, the eager call serves. ``inference_path`` says which.

The raw output goes through ``to_outputs`` for the manifest's kind; a tabular model's
float64 rows are given to the model as float32 (categories as their index).
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

_KERAS_POLICIES = {"fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
EAGER = "keras-eager"
GRAPH = "tf-function"


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


def _float32(batch: np.ndarray) -> np.ndarray:
    """The model's float32 input: tabular rows arrive as float64 (exact category indices and
    integers), tensors already as float32 (then this copies nothing)."""
    return np.ascontiguousarray(batch, dtype=np.float32)


class TensorflowBackend(BaseBackend):
    framework = "tensorflow"

    def _load(self, manifest: Manifest, artifact: Path) -> None:
        if artifact.suffix.lower() != ".keras":
            raise ArtifactError(
                f"only Keras v3 .keras files are served, got {artifact.name!r}; "
                "save the model with model.save('model.keras') and re-register it"
            )
        tf, keras = _import_tf(self.num_threads)
        gpus = tf.config.list_physical_devices("GPU")
        if self.device.startswith("cuda") and not gpus:
            log.warning("device %s requested but no GPU is visible; using cpu", self.device)
            self.device = "cpu"
        elif self.device == "auto":
            self.device = "cuda" if gpus else "cpu"
        self._tf_device = "/GPU:0" if self.device.startswith("cuda") else "/CPU:0"
        if self.precision == "fp16" and self._tf_device == "/CPU:0":
            log.warning("fp16 is not supported on cpu; running %s in fp32", manifest.version)
            self.precision = "fp32"
        try:
            with tf.device(self._tf_device):
                model = keras.models.load_model(artifact, safe_mode=True, compile=False)
                if self.precision != "fp32":
                    model = self._mixed_precision(keras, model, manifest)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(f"cannot load keras model {artifact}: {exc}") from exc
        self._model = model
        self._tf = tf
        self._forward = self._choose_forward(
            manifest, artifact, (EAGER, self._eager), self._build_graph
        )

    def _build_graph(self, windows: np.ndarray) -> tuple[str, Any] | str:
        """The model's call as one tf.function over any batch size, or why there is none."""
        if self._tf_device != "/CPU:0":
            return f"the eager call serves on {self.device}"
        tf, model = self._tf, self._model
        spec = tf.TensorSpec((None, *windows.shape[1:]), tf.float32)

        def call(x: Any) -> Any:
            return model(x, training=False)

        self._graph = tf.function(call, input_signature=[spec])
        return GRAPH, self._run_graph

    def _run_graph(self, batch: np.ndarray) -> np.ndarray:
        with self._tf.device(self._tf_device):
            out = self._graph(_float32(batch))
        if isinstance(out, list | tuple | dict):
            raise ArtifactError("the keras model must have exactly one output")
        return np.asarray(out)

    def _mixed_precision(self, keras: Any, model: Any, manifest: Manifest) -> Any:
        """The same model under Keras' mixed-precision policy (compute in fp16/bf16, weights
        in fp32), built per model rather than through the process-wide global policy.

        The saved layers carry their own float32 policy, so the model is cloned with the
        mixed policy on the layers with trainable weights (Dense, Conv, RNN: where the
        arithmetic is) except the output layer, which stays float32 for a stable softmax
        (Keras' mixed-precision guide). Stateless arithmetic and preprocessing layers
        (Subtract, pooling, Normalization) stay float32: in bf16 their cancellations moved
        the demo GRU's probabilities by 0.17, against 0.014 this way. Weights are copied
        layer by layer; ``finalize_state`` rebuilds derived state (Normalization's
        mean and variance) from the copied variables.
        """
        policy = keras.DTypePolicy(_KERAS_POLICIES[self.precision])
        # The layers that produce the model's outputs (KerasHistory names the operation).
        keep_names = {t._keras_history.operation.name
                      for t in model.outputs if hasattr(t, "_keras_history")}
        if not keep_names and model.layers:
            keep_names = {model.layers[-1].name}

        def clone(layer: Any) -> Any:
            config = layer.get_config()
            if layer.name not in keep_names and layer.trainable_weights:
                config["dtype"] = policy
            return layer.__class__.from_config(config)

        try:
            mixed = keras.models.clone_model(model, clone_function=clone)
        except Exception as exc:  # subclassed models cannot be cloned from their config
            raise ArtifactError(
                f"precision {self.precision} needs a functional or Sequential keras model; "
                f"{manifest.name} {manifest.version} cannot be cloned ({exc}); use fp32"
            ) from exc
        for old, new in zip(model.layers, mixed.layers, strict=True):
            new.set_weights(old.get_weights())
            if hasattr(new, "finalize_state"):
                new.finalize_state()
        return mixed

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch)

    def _eager(self, batch: np.ndarray) -> np.ndarray:
        # Calling the model directly is much faster than model.predict for small batches.
        with self._tf.device(self._tf_device):
            out = self._model(_float32(batch), training=False)
        if isinstance(out, list | tuple | dict):
            raise ArtifactError("the keras model must have exactly one output")
        return np.asarray(out)
