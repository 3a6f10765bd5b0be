"""Output kinds: what a model's answer is, declared in its manifest and honoured end to end.

Every backend returns a float32 batch of shape ``(n, width)``; the kind says what the
columns mean, and everything downstream (answers, OIP outputs, cache values, shadow
agreement, metrics, feedback, the report) reads them through an ``OutputSpec``:

- ``multiclass``: ``width = len(class_labels)`` probabilities per row, summing to 1.
- ``binary``: ``width = 1``, the score of ``class_labels[1]`` (the positive class) in
  [0, 1]; the label is positive when the score is at least ``threshold``.
- ``regression``: ``width = len(outputs)`` values per row (one value, or a vector such as a
  forecast horizon); no labels.

Pure: numpy only, so the router, the CLI and the statistics read kinds without a framework.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BINARY", "KINDS", "MULTICLASS", "REGRESSION", "OutputSpec", "kind_problems"]

MULTICLASS = "multiclass"
BINARY = "binary"
REGRESSION = "regression"
KINDS: tuple[str, ...] = (MULTICLASS, BINARY, REGRESSION)
DEFAULT_THRESHOLD = 0.5
DEFAULT_OUTPUTS: tuple[str, ...] = ("value",)


def kind_problems(
    kind: str, class_labels: Sequence[str], threshold: float | None, outputs: Sequence[str]
) -> list[str]:
    """What is wrong with a declared kind and its labels, threshold and outputs (empty: fine)."""
    problems: list[str] = []
    labels, names = tuple(class_labels), tuple(outputs)
    if kind not in KINDS:
        return [f"kind {kind!r} is not one of {list(KINDS)}"]
    if kind == REGRESSION:
        if labels:
            problems.append("a regression model has no class_labels (name its outputs instead)")
        if not names or len(set(names)) != len(names) or not all(names):
            problems.append("outputs must hold at least one distinct, non-empty name")
    else:
        if kind == MULTICLASS and (len(labels) < 2 or len(set(labels)) != len(labels)):
            problems.append("class_labels must hold at least two distinct labels")
        if kind == BINARY and (len(labels) != 2 or labels[0] == labels[1]):
            problems.append(
                "a binary model needs exactly two distinct class_labels: negative, positive"
            )
        if names:
            problems.append(f"outputs name regression values; a {kind} model has none")
    if threshold is not None:
        if kind != BINARY:
            problems.append(f"threshold applies to binary models only, not {kind}")
        elif not (isinstance(threshold, int | float) and 0.0 < float(threshold) < 1.0
                  and math.isfinite(float(threshold))):
            problems.append(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    return problems


@dataclass(frozen=True)
class OutputSpec:
    """How to read a model's ``(n, width)`` output batch; built from its manifest."""

    kind: str = MULTICLASS
    class_labels: tuple[str, ...] = ()
    threshold: float = DEFAULT_THRESHOLD
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        threshold = None if self.kind != BINARY else self.threshold
        problems = kind_problems(self.kind, self.class_labels, threshold, self.outputs)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def of(
        cls, kind: str, class_labels: Sequence[str], threshold: float | None = None,
        outputs: Sequence[str] = (),
    ) -> OutputSpec:
        """The spec with the kind's defaults filled in (threshold 0.5, one output 'value')."""
        names = tuple(outputs) or (DEFAULT_OUTPUTS if kind == REGRESSION else ())
        return cls(kind, tuple(class_labels),
                   DEFAULT_THRESHOLD if threshold is None else float(threshold), names)

    @property
    def width(self) -> int:
        """Columns per row of the model's output batch."""
        if self.kind == MULTICLASS:
            return len(self.class_labels)
        if self.kind == BINARY:
            return 1
        return len(self.outputs)

    @property
    def classifies(self) -> bool:
        """True when answers carry labels (and feedback is a label)."""
        return self.kind != REGRESSION

    @property
    def n_labels(self) -> int:
        return len(self.class_labels)

    def labels_of(self, values: np.ndarray) -> np.ndarray:
        """Each row's predicted label index: argmax (multiclass), score >= threshold (binary).

        A regression model has no labels: asking is a programming error.
        """
        if self.kind == MULTICLASS:
            return np.argmax(values, axis=1)
        if self.kind == BINARY:
            return (values[:, 0] >= self.threshold).astype(np.int64)
        raise TypeError("a regression model's answers have no labels")

    def agreement(
        self, ours: np.ndarray, theirs: np.ndarray, rtol: float = 0.05, atol: float = 0.0
    ) -> np.ndarray:
        """Per row, whether two answers to the same input agree: the same label for a
        classifier; for regression, every output within ``atol + rtol * |theirs|`` of
        ``theirs`` (the reference: the baseline or the primary), so that one far-off step
        of a forecast horizon is not averaged away."""
        if self.classifies:
            return np.asarray(self.labels_of(ours) == self.labels_of(theirs))
        close = np.abs(ours - theirs) <= atol + rtol * np.abs(theirs)
        return np.asarray(close.all(axis=1))

    def answer(self, row: np.ndarray) -> dict[str, Any]:
        """One row as the JSON answer of /predict and /predict/batch."""
        if self.kind == MULTICLASS:
            labels = self.class_labels
            return {
                "label": labels[int(np.argmax(row))],
                "probabilities": {
                    label: round(float(p), 6) for label, p in zip(labels, row, strict=True)
                },
            }
        if self.kind == BINARY:
            score = float(row[0])
            return {
                "label": self.class_labels[int(score >= self.threshold)],
                "score": round(score, 6),
                "threshold": self.threshold,
            }
        if len(self.outputs) == 1:
            return {"value": float(row[0])}
        return {"values": [float(v) for v in row], "outputs": list(self.outputs)}

    def describe(self) -> dict[str, Any]:
        """What GET /models and the report say of the kind."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind != REGRESSION:
            out["class_labels"] = list(self.class_labels)
        if self.kind == BINARY:
            out["threshold"] = self.threshold
        if self.kind == REGRESSION:
            out["outputs"] = list(self.outputs)
        return out
