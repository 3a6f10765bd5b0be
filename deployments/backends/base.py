"""The Backend contract, the shared input check and the factory.

Every backend takes a batch ``(n, *input_shape)`` float32 and returns
``(n, n_classes)`` float32 probabilities whose rows sum to 1. Making the batch
the only shape removes a whole class of single-versus-batch bugs.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.registry import Manifest, verify_digest
from models.verify import TOLERANCE, max_abs_diff, verification_windows
from serve.errors import ArtifactError, ConfigError, InvalidInput

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "Backend",
    "BaseBackend",
    "check_batch",
    "load_backend",
    "to_probabilities",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda", "auto")
_MODULES = {
    "sklearn": "deployments.backends.sklearn:SklearnBackend",
    "torch": "deployments.backends.torch:TorchBackend",
    "tensorflow": "deployments.backends.tensorflow:TensorflowBackend",
}


@runtime_checkable
class Backend(Protocol):
    def load(self, manifest: Manifest, artifact: Path) -> None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_batch(batch: Any, manifest: Manifest) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 array, or raise InvalidInput saying why."""
    try:
        arr = np.asarray(batch, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        expected_text = _shape_text(("n", *manifest.input_shape))
        raise InvalidInput(
            f"input must be a numeric array of shape {expected_text}; "
            f"it could not be read as one ({exc})"
        ) from exc
    expected = ("n", *manifest.input_shape)
    if arr.ndim != len(expected) or tuple(arr.shape[1:]) != tuple(manifest.input_shape):
        raise InvalidInput(f"expected shape {_shape_text(expected)}, got {_shape_text(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput("empty batch: send at least one instance")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
        raise InvalidInput(
            f"input holds NaN or infinite values ({bad} of {arr.shape[0]} instances)"
        )
    return np.ascontiguousarray(arr)


def to_probabilities(out: Any, n: int, n_classes: int, output: str) -> np.ndarray:
    """Validate a model's raw output and turn it into float32 rows summing to 1."""
    arr = np.asarray(out, dtype=np.float64)
    if arr.shape != (n, n_classes):
        raise ArtifactError(
            f"the model returned shape {_shape_text(arr.shape)}, expected ({n}, {n_classes}); "
            "check the manifest's class_labels and input_shape"
        )
    if output == "logits":
        arr = np.exp(arr - arr.max(axis=1, keepdims=True))
    elif output != "probabilities":
        raise ArtifactError(f"unknown output kind {output!r}; use 'probabilities' or 'logits'")
    arr = np.clip(arr, 0.0, None)
    sums = arr.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(sums)) or np.any(sums <= 0):
        raise ArtifactError("the model returned non-finite or all-zero scores")
    return (arr / sums).astype(np.float32)


Forward = Callable[[np.ndarray], Any]


class BaseBackend(ABC):
    """Shared skeleton: verify the digest, load, then check input and output on every call.

    ``inference_path`` names the call that serves once loaded (the plain framework call
    or a faster one verified at load to give the same probabilities); the replica's
    stats report it.
    """

    framework: str = ""
    inference_path: str | None = None
    inference_path_max_dp: float | None = None
    inference_path_reason: str = ""

    def __init__(self, *, device: str = "cpu", precision: str = "fp32", num_threads: int = 1):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if not (device in DEVICES or device.startswith("cuda:")):
            raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")
        self.device = device
        self.precision = precision
        self.num_threads = num_threads
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("backend used before load()")
        return self._manifest

    def load(self, manifest: Manifest, artifact: Path) -> None:
        if manifest.framework != self.framework:
            raise ArtifactError(f"{type(self).__name__} cannot load a {manifest.framework} model")
        # Check again right here: the bytes deserialized must be the registered ones.
        path = verify_digest(manifest, artifact)
        self._load(manifest, path)
        self._manifest = manifest

    def predict(self, batch: np.ndarray) -> np.ndarray:
        manifest = self.manifest
        arr = check_batch(batch, manifest)
        out = self._predict(arr)
        return to_probabilities(out, arr.shape[0], manifest.n_classes, self.output_kind(manifest))

    def output_kind(self, manifest: Manifest) -> str:
        return str(manifest.extra.get("output", "probabilities"))

    def _choose_forward(
        self,
        manifest: Manifest,
        artifact: Path,
        plain: tuple[str, Forward],
        build: Callable[[np.ndarray], tuple[str, Forward] | str],
    ) -> Forward:
        """The faster forward that ``build`` makes, if its probabilities equal the plain
        forward's within ``TOLERANCE`` on the registered verification windows (as a batch,
        and at one and two rows); else the plain forward. ``build`` returns
        ``(name, forward)`` or the reason it cannot make one."""
        where = f"{manifest.name} {manifest.version}"
        plain_name, plain_fn = plain
        chosen, max_dp, reason = plain_name, None, ""
        fast: Forward | None = None
        windows, source = verification_windows(manifest, artifact.parent)
        try:
            built = build(windows)
        except Exception as exc:
            built = f"cannot build the faster path ({type(exc).__name__}: {exc})"
        if isinstance(built, str):
            reason = built
        else:
            fast_name, fast = built
            n_classes, output = manifest.n_classes, self.output_kind(manifest)
            try:
                worst = 0.0
                for batch in (windows, windows[:1], windows[:2]):
                    ref = to_probabilities(plain_fn(batch), len(batch), n_classes, output)
                    got = to_probabilities(fast(batch), len(batch), n_classes, output)
                    worst = max(worst, max_abs_diff(got, ref))
            except Exception as exc:
                reason = f"{fast_name} not verified ({type(exc).__name__}: {exc})"
            else:
                max_dp = worst
                if worst <= TOLERANCE:
                    chosen = fast_name
                else:
                    reason = (
                        f"{fast_name} differs from {plain_name} by {worst:.3g} > {TOLERANCE:g} "
                        f"on {len(windows)} verification windows"
                    )
        self.inference_path, self.inference_path_max_dp = chosen, max_dp
        self.inference_path_reason = reason
        if chosen != plain_name:
            log.info(
                "%s serves through %s (max |dp| %.3g against %s on %d %s windows)",
                where, chosen, max_dp or 0.0, plain_name, len(windows), source,
            )
            assert fast is not None
            return fast
        log_at = log.warning if max_dp is not None or "not verified" in reason else log.info
        log_at("%s serves through %s: %s", where, plain_name, reason)
        return plain_fn

    @abstractmethod
    def _load(self, manifest: Manifest, artifact: Path) -> None: ...

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> Any: ...


def load_backend(
    manifest: Manifest,
    artifact_path: str | Path,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    num_threads: int = 1,
) -> Backend:
    """Build the backend for ``manifest.framework`` and load the (verified) artifact."""
    target = _MODULES.get(manifest.framework)
    if target is None:
        raise ArtifactError(
            f"model {manifest.name} version {manifest.version} names unknown framework "
            f"{manifest.framework!r}; supported: {sorted(_MODULES)}"
        )
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: BaseBackend = cls(device=device, precision=precision, num_threads=num_threads)
    backend.load(manifest, Path(artifact_path))
    log.info(
        "loaded %s %s (%s) on %s/%s",
        manifest.name,
        manifest.version,
        manifest.framework,
        backend.device,
        backend.precision,
    )
    return backend
