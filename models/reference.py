"""Reference statistics of a version's inputs and answers, recorded at training or registration.

Drift is judged against this (router/controlplane/drift.py): per input channel (the last
axis of a tensor input, so the activity model's ``[50, 9]`` window has 9 channels and every
time step is one sample of each; each field of a tabular schema, encoded as models/schema.py
encodes it) a fixed-bin histogram whose inner edges are the reference's own quantiles (20
bins by default, plus an open bin below the first edge and one above the last, so live
values outside the reference's range are counted, not dropped), its quantiles, mean, std
and count; and the distribution of the predicted labels on the same held-out data (a
regression model: a histogram of its first output, binned the same way).

The live side bins with the same edges (``bin_counts``), so PSI and the binned KS compare
like with like. Saved as ``reference.json`` beside the artifact, listed in the manifest's
attachments (sha256-checked like the rest).

Pure: numpy only, no Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.errors import ArtifactError

__all__ = [
    "DEFAULT_BINS",
    "QUANTILES",
    "REFERENCE_FILE",
    "ChannelReference",
    "Reference",
    "bin_counts",
    "build_reference",
    "channel_matrix",
    "channel_names",
    "label_counts",
    "load_reference",
]

REFERENCE_FILE = "reference.json"
DEFAULT_BINS = 20
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_ROWS = 200_000  # channel samples kept for the edges (a seeded subsample beyond)
MAX_REFERENCE_ROWS = 50_000  # input rows of a registration's reference data used


def channel_matrix(batch: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """``(n, *input_shape)`` inputs as ``(samples, channels)``: the last axis is the channel.

    A tabular row ``(n, fields)`` is already that; a window ``(n, 50, 9)`` gives
    ``(n * 50, 9)``.
    """
    arr = np.asarray(batch, dtype=np.float64)
    channels = int(input_shape[-1]) if len(input_shape) else 1
    return arr.reshape(-1, channels)


def channel_names(input_shape: Sequence[int], schema: Sequence[dict[str, Any]] | None) -> list[str]:
    """A tabular model's field names, else ``ch0``, ``ch1``, ... over the last axis."""
    if schema:
        return [str(f["name"]) for f in schema]
    return [f"ch{i}" for i in range(int(input_shape[-1]) if len(input_shape) else 1)]


def _edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges from the values' quantiles; repeated edges (discrete values) merged."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0]
    qs = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1))
    return [float(e) for e in np.unique(qs)]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the ``len(edges) + 1`` bins ``(-inf, e0), [e0, e1), ...,
    [e_last, inf)``; NaN counted in none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def label_counts(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """How often each label index was predicted (indices outside 0..n-1 ignored)."""
    lab = np.asarray(labels, dtype=np.int64).ravel()
    lab = lab[(lab >= 0) & (lab < n_labels)]
    return np.bincount(lab, minlength=n_labels).astype(np.int64)


@dataclass(frozen=True)
class ChannelReference:
    """One channel's reference: its bin edges and counts, quantiles and moments."""

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]  # len(edges) + 1: the open bins at both ends included
    quantiles: dict[str, float]
    mean: float
    std: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "edges": list(self.edges), "counts": list(self.counts),
                "quantiles": dict(self.quantiles), "mean": self.mean, "std": self.std,
                "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelReference:
        edges = tuple(float(e) for e in data["edges"])
        counts = tuple(int(c) for c in data["counts"])
        if len(counts) != len(edges) + 1 or not edges:
            raise ValueError(f"channel {data.get('name')!r}: counts must be one more than edges")
        if any(b < a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"channel {data.get('name')!r}: edges must be sorted")
        return cls(str(data["name"]), edges, counts,
                   {str(k): float(v) for k, v in dict(data.get("quantiles", {})).items()},
                   float(data["mean"]), float(data["std"]), int(data["count"]))


@dataclass(frozen=True)
class Reference:
    """A version's reference: its channels, and its answers' distribution (or none)."""

    channels: tuple[ChannelReference, ...]
    rows: int  # input rows (instances) it was computed from
    source: str = "held-out"
    label_names: tuple[str, ...] = ()  # classifiers: the labels, in index order
    label_counts: tuple[int, ...] = ()  # classifiers: predictions per label on the rows
    output_edges: tuple[float, ...] = ()  # regression: bins of the first output
    output_counts: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def answers(self) -> tuple[int, ...]:
        """The answers' reference counts: per label, or per output bin (regression)."""
        return self.label_counts or self.output_counts

    def bin_inputs(self, batch: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
        """Live inputs binned as the reference was: ``(channels, bins)`` counts; bins is the
        widest channel's, the narrower ones padded with zeros."""
        m = channel_matrix(batch, input_shape)
        width = max(len(c.counts) for c in self.channels)
        out = np.zeros((len(self.channels), width), dtype=np.int64)
        for i, ch in enumerate(self.channels):
            counts = bin_counts(m[:, i], ch.edges)
            out[i, : len(counts)] = counts
        return out

    def bin_answers(self, labels: np.ndarray | None, outputs: np.ndarray | None) -> np.ndarray:
        """Live answers counted like the reference's: per label, or per output bin."""
        if self.label_counts:
            return label_counts(np.asarray(labels), len(self.label_counts))
        if self.output_edges and outputs is not None:
            return bin_counts(np.asarray(outputs)[:, 0], self.output_edges)
        return np.zeros(0, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1, "rows": self.rows, "source": self.source,
            "channels": [c.to_dict() for c in self.channels],
            "label_names": list(self.label_names), "label_counts": list(self.label_counts),
            "output_edges": list(self.output_edges), "output_counts": list(self.output_counts),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        try:
            channels = tuple(ChannelReference.from_dict(c) for c in data["channels"])
            ref = cls(
                channels, int(data["rows"]), str(data.get("source", "held-out")),
                tuple(str(n) for n in data.get("label_names", ())),
                tuple(int(c) for c in data.get("label_counts", ())),
                tuple(float(e) for e in data.get("output_edges", ())),
                tuple(int(c) for c in data.get("output_counts", ())),
                dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"invalid reference statistics: {exc!r}") from exc
        if not channels:
            raise ArtifactError("invalid reference statistics: no channels")
        if ref.output_edges and len(ref.output_counts) != len(ref.output_edges) + 1:
            raise ArtifactError("invalid reference statistics: output_counts must be one "
                                "more than output_edges")
        return ref

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n",
                        encoding="utf-8")
        return path

    def summary(self) -> str:
        """One line for the CLI: what the reference holds."""
        answers = (f"{len(self.label_counts)} labels" if self.label_counts else
                   "an output histogram" if self.output_counts else "no answers")
        return f"{len(self.channels)} channels over {self.rows} rows ({self.source}), {answers}"


def build_reference(
    inputs: np.ndarray,
    input_shape: Sequence[int],
    *,
    names: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] = (),
    outputs: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    source: str = "held-out",
    seed: int = 0,
) -> Reference:
    """The reference of ``inputs`` ``(n, *input_shape)`` and, when given, of the predicted
    ``labels`` (indices into ``label_names``) or the regression ``outputs`` ``(n, k)``."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    arr = np.asarray(inputs, dtype=np.float64)
    n = int(arr.shape[0]) if arr.ndim else 0
    if n == 0:
        raise ValueError("reference statistics need at least one input row")
    m = channel_matrix(arr, input_shape)
    names = list(names) if names is not None else channel_names(input_shape, None)
    if len(names) != m.shape[1]:
        raise ValueError(f"{len(names)} channel names for {m.shape[1]} channels")
    sample = m
    if len(m) > MAX_ROWS:
        pick = np.random.default_rng(seed).choice(len(m), MAX_ROWS, replace=False)
        sample = m[np.sort(pick)]
    channels = []
    for i, name in enumerate(names):
        col = m[:, i]
        finite = col[np.isfinite(col)]
        edges = _edges(sample[:, i], bins)
        qs = np.quantile(finite, QUANTILES) if finite.size else [math.nan] * len(QUANTILES)
        channels.append(ChannelReference(
            name, tuple(edges), tuple(int(c) for c in bin_counts(col, edges)),
            {f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)},
            float(finite.mean()) if finite.size else math.nan,
            float(finite.std()) if finite.size else math.nan, int(finite.size),
        ))
    lab_counts: tuple[int, ...] = ()
    out_edges: tuple[float, ...] = ()
    out_counts: tuple[int, ...] = ()
    if labels is not None and label_names:
        lab_counts = tuple(int(c) for c in label_counts(labels, len(label_names)))
    elif outputs is not None:
        first = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
        out_edges = tuple(_edges(first, bins))
        out_counts = tuple(int(c) for c in bin_counts(first, out_edges))
    return Reference(tuple(channels), n, source, tuple(label_names) if lab_counts else (),
                     lab_counts, out_edges, out_counts)


def load_reference(registry: Any, manifest: Any) -> Reference | None:
    """The version's reference from the registry (sha256-checked), or None when it has none.

    ``registry``: a models.registry.Registry; ``manifest`` its Manifest. A reference that is
    listed but missing, altered or unreadable raises ArtifactError.
    """
    listed = (manifest.extra.get("attachments") or {})
    if REFERENCE_FILE not in listed:
        return None
    path = registry.verified_attachment(manifest, REFERENCE_FILE)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    return Reference.from_dict(data)
