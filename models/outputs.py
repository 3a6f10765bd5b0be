"""A model's raw output turned into the ``(n, width)`` float32 batch its kind promises.

Every backend returns ``to_outputs(raw, n, spec, output)``; registration runs the same
conversion on the verification inputs, so an artifact whose output does not fit its
declared kind is refused when it is registered rather than on its first request. It lives
in the base layer (not in ``deployments/backends``) for that reason: ``models/register.py``
may not import the planes. Pure numpy.

``output`` says what the raw numbers are:

- ``probabilities``: multiclass rows (normalized here) or a binary score in [0, 1];
- ``logits``: softmax (multiclass, binary ``(n, 2)``) or sigmoid (binary ``(n,)``/``(n, 1)``);
- ``values``: regression outputs, any finite floats (the only form regression accepts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.kinds import BINARY, MULTICLASS, REGRESSION, OutputSpec
from serve.errors import ArtifactError

__all__ = [
    "LOGITS",
    "OUTPUT_FORMS",
    "PROBABILITIES",
    "VALUES",
    "default_output",
    "output_form",
    "to_outputs",
    "to_probabilities",
]

PROBABILITIES = "probabilities"
LOGITS = "logits"
VALUES = "values"
OUTPUT_FORMS: tuple[str, ...] = (PROBABILITIES, LOGITS, VALUES)
# A binary score declared as a probability may leave [0, 1] by float rounding, not more.
_SCORE_SLACK = 1e-6


def default_output(kind: str) -> str:
    """The output form a kind assumes when none is declared."""
    return VALUES if kind == REGRESSION else PROBABILITIES


def output_form(kind: str, extra: Mapping[str, Any]) -> str:
    """The manifest's declared output form (``extra["output"]``), or the kind's default."""
    return str(extra.get("output") or default_output(kind))


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _finite(arr: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ArtifactError(f"the model returned non-finite {what}")


def _normalize(arr: np.ndarray, output: str) -> np.ndarray:
    """Rows of probabilities or logits as float64 rows summing to 1."""
    if output == LOGITS:
        arr = np.exp(arr - arr.max(axis=1, keepdims=True))
    arr = np.clip(arr, 0.0, None)
    sums = arr.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(sums)) or np.any(sums <= 0):
        raise ArtifactError("the model returned non-finite or all-zero scores")
    return arr / sums


def _classifier_form(output: str, kind: str) -> None:
    if output not in (PROBABILITIES, LOGITS):
        raise ArtifactError(
            f"a {kind} model's output must be 'probabilities' or 'logits', not {output!r}; "
            "check the manifest's extra.output"
        )


def _multiclass(arr: np.ndarray, n: int, width: int, output: str) -> np.ndarray:
    _classifier_form(output, MULTICLASS)
    if arr.shape != (n, width):
        raise ArtifactError(
            f"the model returned shape {_shape_text(arr.shape)}, expected ({n}, {width}); "
            "check the manifest's class_labels and input_shape"
        )
    return _normalize(arr, output).astype(np.float32)


def _binary(arr: np.ndarray, n: int, output: str) -> np.ndarray:
    _classifier_form(output, BINARY)
    if arr.shape == (n, 2):  # [negative, positive]
        return _normalize(arr, output)[:, 1:].astype(np.float32)
    if arr.shape not in ((n,), (n, 1)):
        raise ArtifactError(
            f"the model returned shape {_shape_text(arr.shape)}; a binary model returns ({n},), "
            f"({n}, 1) (the positive class's score) or ({n}, 2) (negative, positive); check the "
            "manifest's kind (a wider output is multiclass) and input_shape"
        )
    score = arr.reshape(n, 1)
    _finite(score, "scores")
    if output == LOGITS:
        # Sigmoid without overflow for large |logit|.
        e = np.exp(-np.abs(score))
        score = np.where(score >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    elif np.any(score < -_SCORE_SLACK) or np.any(score > 1.0 + _SCORE_SLACK):
        raise ArtifactError(
            f"the binary model returned scores in [{score.min():.4g}, {score.max():.4g}], "
            "outside [0, 1]; if they are logits, declare the manifest's output 'logits'"
        )
    return np.clip(score, 0.0, 1.0).astype(np.float32)


def _regression(arr: np.ndarray, n: int, width: int, output: str) -> np.ndarray:
    if output != VALUES:
        raise ArtifactError(
            f"a regression model's output is 'values', not {output!r}: its numbers are served "
            "as they are; check the manifest's extra.output"
        )
    if width == 1 and arr.shape == (n,):
        arr = arr.reshape(n, 1)
    if arr.shape != (n, width):
        accepted = f"({n},) or ({n}, 1)" if width == 1 else f"({n}, {width})"
        raise ArtifactError(
            f"the model returned shape {_shape_text(arr.shape)}, expected {accepted}; check the "
            f"manifest's outputs ({width} named) and input_shape"
        )
    _finite(arr, "values")
    if arr.size and float(np.abs(arr).max()) > float(np.finfo(np.float32).max):
        raise ArtifactError("the model returned values beyond float32's range (3.4e38)")
    return arr.astype(np.float32)


def to_outputs(out: Any, n: int, spec: OutputSpec, output: str) -> np.ndarray:
    """Validate a model's raw output for ``n`` rows and return float32 ``(n, spec.width)``:
    probabilities summing to 1 (multiclass), the positive class's score in [0, 1] (binary)
    or the values (regression). ArtifactError names the manifest field to check."""
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the model's output is not a numeric array ({exc})") from exc
    if spec.kind == MULTICLASS:
        return _multiclass(arr, n, spec.width, output)
    if spec.kind == BINARY:
        return _binary(arr, n, output)
    if spec.kind == REGRESSION:
        return _regression(arr, n, spec.width, output)
    raise ArtifactError(f"unknown output kind {spec.kind!r}; check the manifest's kind")


def to_probabilities(out: Any, n: int, n_classes: int, output: str) -> np.ndarray:
    """Multiclass ``to_outputs`` by class count (the form before kinds; kept for callers)."""
    arr = np.asarray(out, dtype=np.float64)
    if output not in (PROBABILITIES, LOGITS):
        raise ArtifactError(f"unknown output kind {output!r}; use 'probabilities' or 'logits'")
    return _multiclass(arr, n, n_classes, output)
