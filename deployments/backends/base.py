"""The Backend contract, the shared input check and the factory.

Every backend takes a batch ``(n, *input_shape)`` in the manifest's ``input_dtype``
(float32 tensors; float64 rows ``(n, len(input_schema))`` for a tabular model) and returns
``(n, manifest.width)`` float32 outputs of the manifest's kind (``models.outputs.to_outputs``:
probabilities summing to 1, a binary score, or regression values). Making the batch the
only shape removes a whole class of single-versus-batch bugs.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.kinds import REGRESSION
from models.outputs import output_form, to_outputs, to_probabilities
from models.registry import Manifest, verify_digest
from models.verify import (
    REGRESSION_RTOL,
    TOLERANCE,
    output_diff,
    verification_windows,
    window_dtype,
)
from serve.errors import ArtifactError, ConfigError, InvalidInput

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "Backend",
    "BaseBackend",
    "check_batch",
    "expected_shape",
    "load_backend",
    "to_outputs",
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


def expected_shape(manifest: Manifest) -> tuple[int, ...]:
    """One instance's shape: ``(len(input_schema),)`` for a tabular model, else input_shape."""
    if manifest.input_schema is not None:
        return (len(manifest.input_schema),)
    return tuple(manifest.input_shape)


def check_batch(batch: Any, manifest: Manifest) -> np.ndarray:
    """Return ``batch`` as a C-contiguous array of the manifest's ``input_dtype`` (float32,
    or float64 for tabular rows), or raise InvalidInput saying why."""
    shape = expected_shape(manifest)
    expected = ("n", *shape)
    try:
        arr = np.asarray(batch, dtype=window_dtype(manifest))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"input must be a numeric array of shape {_shape_text(expected)}; "
            f"it could not be read as one ({exc})"
        ) from exc
    if arr.ndim != len(expected) or tuple(arr.shape[1:]) != shape:
        raise InvalidInput(f"expected shape {_shape_text(expected)}, got {_shape_text(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInput("empty batch: send at least one instance")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(axis=1).sum())
        raise InvalidInput(
            f"input holds NaN or infinite values ({bad} of {arr.shape[0]} instances)"
        )
    return np.ascontiguousarray(arr)


Forward = Callable[[np.ndarray], Any]


class BaseBackend(ABC):
    """Shared skeleton: verify the digest, load, then check input and output on every call.

    ``inference_path`` names the call that serves once loaded (the plain framework call
    or a faster one verified at load to give the same outputs); the replica's stats
    report it.
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
        return to_outputs(out, arr.shape[0], manifest.spec, self.output_kind(manifest))

    def output_kind(self, manifest: Manifest) -> str:
        """What the raw output holds: 'probabilities', 'logits' or 'values' (regression)."""
        return output_form(manifest.kind, manifest.extra)

    def _choose_forward(
        self,
        manifest: Manifest,
        artifact: Path,
        plain: tuple[str, Forward],
        build: Callable[[np.ndarray], tuple[str, Forward] | str],
    ) -> Forward:
        """The faster forward that ``build`` makes, if its outputs equal the plain forward's
        on the registered verification windows (as a batch, and at one and two rows): within
        ``TOLERANCE`` for probabilities and scores, within ``REGRESSION_RTOL`` of each
        column's scale for regression values (models/verify.py says why); else the plain
        forward. ``build`` returns ``(name, forward)`` or the reason it cannot make one."""
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
            spec, output = manifest.spec, self.output_kind(manifest)
            tolerance = REGRESSION_RTOL if spec.kind == REGRESSION else TOLERANCE
            relative = " relative to scale" if spec.kind == REGRESSION else ""
            try:
                worst = 0.0
                for batch in (windows, windows[:1], windows[:2]):
                    ref = to_outputs(plain_fn(batch), len(batch), spec, output)
                    got = to_outputs(fast(batch), len(batch), spec, output)
                    worst = max(worst, output_diff(got, ref, spec.kind))
            except Exception as exc:
                reason = f"{fast_name} not verified ({type(exc).__name__}: {exc})"
            else:
                max_dp = worst
                if worst <= tolerance:
                    chosen = fast_name
                else:
                    reason = (
                        f"{fast_name} differs from {plain_name} by {worst:.3g}{relative} > "
                        f"{tolerance:g} on {len(windows)} verification windows"
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
