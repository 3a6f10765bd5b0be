"""PyTorch adapter: a state_dict loaded with ``weights_only=True`` into a named class.

Whole pickled modules are never loaded: the class comes from the manifest
(``extra.module_class = "pkg.module:Class"``) and the file only holds tensors.

On cpu in fp32 the module is traced to TorchScript (``torch.jit.trace``) once at
load: the same kernels without the Python of ``nn.Module.__call__`` per layer,
bitwise the same logits for the demo CNN and 1.2-1.6x faster for 1-14 rows
(benchmarks/model_paths.py). A trace replays the one path it recorded, so it is only
made for a module that ``torch.export`` accepts with a dynamic batch (export refuses
Python control flow on tensor values), and it serves only after matching the eager
module on the verification windows; otherwise, and on GPU or under autocast, the
eager module serves. ``inference_path`` says which.

The raw output goes through ``to_outputs`` for the manifest's kind (logits or
probabilities of classes, a binary score or logit, regression values); a tabular model's
float64 rows are given to the net as float32 (categories as their index).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import BaseBackend
from models.registry import Manifest
from serve.errors import ArtifactError

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)

EAGER = "torch-eager"
TRACED = "torchscript-trace"
# The largest batch the exported graph is checked for; serving batches are far smaller.
_MAX_BATCH = 1 << 16


def _import_class(spec: str) -> Any:
    module_name, sep, cls_name = spec.partition(":")
    if not sep or not module_name or not cls_name:
        raise ArtifactError(f"module_class must look like 'pkg.module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArtifactError(f"cannot import {module_name!r} for {spec!r}: {exc}") from exc
    try:
        return getattr(module, cls_name)
    except AttributeError as exc:
        raise ArtifactError(f"module {module_name!r} has no class {cls_name!r}") from exc


def _float32(batch: np.ndarray) -> np.ndarray:
    """The net's float32 input: tabular rows arrive as float64 (exact category indices and
    integers), tensors already as float32 (then this copies nothing)."""
    return np.ascontiguousarray(batch, dtype=np.float32)


class TorchBackend(BaseBackend):
    framework = "torch"

    def _load(self, manifest: Manifest, artifact: Path) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        spec = manifest.extra.get("module_class")
        if not isinstance(spec, str):
            raise ArtifactError(
                f"torch model {manifest.name} {manifest.version} has no extra.module_class; "
                "re-register it with torch_class='pkg.module:Class'"
            )
        cls = _import_class(spec)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise ArtifactError(f"{spec} is not a torch.nn.Module subclass")
        init_kwargs = manifest.extra.get("init_kwargs") or {}
        try:
            model = cls(**init_kwargs)
            state = torch.load(artifact, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise ArtifactError(
                f"cannot load torch state_dict {artifact} into {spec}({init_kwargs}): {exc}"
            ) from exc

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s requested but CUDA is not available; using cpu", device)
            device = "cpu"
        self.device = device
        self._torch_device = torch.device(device)

        self._autocast_dtype: Any = None
        if self.precision == "fp16":
            if self._torch_device.type == "cpu":
                log.warning("fp16 is not supported on cpu; running %s in fp32", manifest.version)
                self.precision = "fp32"
            else:
                self._autocast_dtype = torch.float16
        elif self.precision == "bf16":
            self._autocast_dtype = torch.bfloat16

        self._model = model.to(self._torch_device).eval()
        self._torch = torch
        self._forward = self._choose_forward(
            manifest, artifact, (EAGER, self._eager), self._build_traced
        )

    def _build_traced(self, windows: np.ndarray) -> tuple[str, Any] | str:
        """A traced module for cpu/fp32, or why there is none."""
        torch = self._torch
        if self._torch_device.type != "cpu" or self._autocast_dtype is not None:
            return f"the eager module serves on {self.device}/{self.precision}"
        # Two rows: a batch of one would be specialized as a constant size.
        two = np.resize(_float32(windows), (2, *windows.shape[1:]))
        example = torch.from_numpy(np.ascontiguousarray(two))
        from torch.export import Dim, export

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace's deprecation and TracerWarnings
            try:
                export(
                    self._model, (example,), strict=False,
                    dynamic_shapes=({0: Dim("batch", min=1, max=_MAX_BATCH)},),
                )
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                return (
                    "torch.export refuses the module, so it is not traced "
                    f"({type(exc).__name__}: {first})"
                )
            with torch.no_grad():
                traced = torch.jit.trace(self._model, example, check_trace=False)
        self._traced = traced
        return TRACED, self._run_traced

    def _run_traced(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._traced(torch.from_numpy(_float32(batch)))
        if not isinstance(out, torch.Tensor):
            raise ArtifactError(f"the torch model returned {type(out).__name__}, not a tensor")
        return out.float().numpy()

    def _eager(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(_float32(batch)).to(self._torch_device)
        ctx = (
            torch.autocast(device_type=self._torch_device.type, dtype=self._autocast_dtype)
            if self._autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), ctx:
            out = self._model(x)
        if not isinstance(out, torch.Tensor):
            raise ArtifactError(f"the torch model returned {type(out).__name__}, not a tensor")
        return out.float().cpu().numpy()

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch)
