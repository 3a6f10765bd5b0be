"""The pure part of batch scoring and replay: no Ray, no framework.

- ``decode_frame``: one batch of input rows (a pandas DataFrame) to the model's input
  matrix, every bad row set aside as a ``RowError`` with its row index and the reason
  (wrong shape, NaN where not allowed, a missing column, a failed decode), so one bad row
  never fails the job;
- ``experiment_arms`` / ``assign_arms``: the arm the online router gives each user key,
  by the router's own ``WeightedPolicy`` (router/dataplane/policy.py), not a copy of it;
- ``output_columns``: a model's ``(n, width)`` outputs as the output file's columns;
- ``replay_rows`` / ``replay_summary``: what a replay reports (agreement with what was
  served, overall and for the rows the replayed version answered itself, |dp|, accuracy
  against the feedback labels with Wilson intervals, confusion matrices).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.kinds import BINARY, MULTICLASS, REGRESSION, OutputSpec
from models.registry import Manifest
from models.schema import Schema
from router.controlplane.stats import wilson_interval
from router.dataplane.policy import Arm, RouteContext, WeightedPolicy
from serve.config import ExperimentConfig
from serve.errors import ConfigError, InvalidInput

__all__ = [
    "ROW",
    "Decoded",
    "RowError",
    "assign_arms",
    "decode_frame",
    "decode_tensor",
    "decode_tabular",
    "experiment_arms",
    "join_feedback",
    "output_columns",
    "replay_rows",
    "replay_summary",
]

ROW = "row"  # the input's row index (0-based, in file order), carried through the job
DEFAULT_INPUT_COLUMN = "input"


@dataclass(frozen=True)
class RowError:
    """One input row that could not be scored, and why (the errors file's row)."""

    row: int
    reason: str


@dataclass
class Decoded:
    """A batch's good rows as the model's input matrix, and the rows set aside."""

    batch: np.ndarray  # (n_good, *shape) in the manifest's input dtype
    rows: np.ndarray  # int64 row indices of ``batch``'s rows
    positions: np.ndarray  # their positions in the frame that was decoded
    errors: list[RowError] = field(default_factory=list)


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return bool(isinstance(value, np.floating) and np.isnan(value))


def _tensor_row(value: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """One row's values as ``shape``; ValueError saying why it is not one."""
    if _is_missing(value):
        raise ValueError("no input (the cell is empty)")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):  # a CSV cell: the flattened row as a JSON list
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"cannot decode the cell as a JSON list of numbers ({exc})") from None
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot decode the values as numbers ({exc})") from None
    size = int(np.prod(shape))
    if arr.size != size or (arr.ndim > 1 and tuple(arr.shape) != shape):
        raise ValueError(
            f"wrong shape: expected {size} values {_shape_text(shape)}, got "
            f"{arr.size} {_shape_text(arr.shape)}"
        )
    arr = arr.reshape(shape)
    bad = ~np.isfinite(arr)
    if bad.any():
        at = np.argwhere(bad)[0]
        raise ValueError(
            f"NaN or infinite value ({int(bad.sum())} of {size}; first at "
            f"{_shape_text(tuple(int(i) for i in at))})"
        )
    return arr


def decode_tensor(
    values: Sequence[Any], rows: Sequence[int], shape: tuple[int, ...], dtype: Any = np.float32
) -> Decoded:
    """Rows of a tensor model: each value a flattened list / array of ``prod(shape)``
    numbers (or a JSON list string, from a CSV cell)."""
    good: list[np.ndarray] = []
    positions: list[int] = []
    errors: list[RowError] = []
    for i, value in enumerate(values):
        try:
            good.append(_tensor_row(value, shape, dtype))
        except ValueError as exc:
            errors.append(RowError(int(rows[i]), str(exc)))
        else:
            positions.append(i)
    batch = np.stack(good) if good else np.empty((0, *shape), dtype=dtype)
    pos = np.asarray(positions, dtype=np.int64)
    return Decoded(np.ascontiguousarray(batch, dtype=dtype),
                   np.asarray(rows, dtype=np.int64)[pos], pos, errors)


def _cell(value: Any) -> Any:
    """A pandas cell as a record value: NaN / NaT / NA / None are missing; numpy scalars
    plain Python."""
    if _is_missing(value) or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_tabular(frame: Any, schema: Schema, rows: Sequence[int]) -> Decoded:
    """Rows of a tabular model: the schema's named columns, encoded by the schema's own
    rules (``Schema.encode``), so a bad value is refused with the words the REST API uses."""
    missing = [f.name for f in schema.fields if f.name not in frame.columns]
    missing_required = [f.name for f in schema.fields if f.required and f.name in missing]
    columns = {f.name: (frame[f.name].tolist() if f.name in frame.columns
                        else [None] * len(frame)) for f in schema.fields}
    good: list[np.ndarray] = []
    positions: list[int] = []
    errors: list[RowError] = []
    for i in range(len(frame)):
        if missing_required:
            errors.append(RowError(int(rows[i]), (
                f"missing column(s) {missing_required}: the model's fields are "
                f"{list(schema.names)}")))
            continue
        record = {name: _cell(col[i]) for name, col in columns.items() if name not in missing}
        try:
            good.append(schema.encode([record], "row", single=True)[0])
        except InvalidInput as exc:
            errors.append(RowError(int(rows[i]), exc.message))
        else:
            positions.append(i)
    batch = np.stack(good) if good else np.empty((0, schema.width), dtype=np.float64)
    pos = np.asarray(positions, dtype=np.int64)
    return Decoded(batch.astype(np.float64, copy=False),
                   np.asarray(rows, dtype=np.int64)[pos], pos, errors)


def decode_frame(frame: Any, manifest: Manifest, input_column: str = DEFAULT_INPUT_COLUMN
                 ) -> Decoded:
    """A batch of input rows for ``manifest``'s model. A tensor model reads
    ``input_column`` (flattened rows); a tabular one the schema's named columns. The
    frame's ``row`` column (the row index in the input) names each error."""
    rows = frame[ROW].tolist() if ROW in frame.columns else list(range(len(frame)))
    if manifest.input_schema is not None:
        schema = Schema.parse(manifest.input_schema)
        if input_column in frame.columns and not set(schema.names) & set(frame.columns):
            # an .npy of canonical rows (n, len(input_schema)), float64
            return decode_tensor(frame[input_column].tolist(), rows, (schema.width,),
                                 np.float64)
        return decode_tabular(frame, schema, rows)
    shape = tuple(manifest.input_shape)
    if input_column not in frame.columns:
        reason = (f"missing column {input_column!r} (the flattened input rows of shape "
                  f"{_shape_text(shape)}); the columns are {list(map(str, frame.columns))}")
        return Decoded(np.empty((0, *shape), dtype=np.float32), np.empty(0, np.int64),
                       np.empty(0, np.int64), [RowError(int(r), reason) for r in rows])
    return decode_tensor(frame[input_column].tolist(), rows, shape, np.float32)


# --- the experiment's arm of each row ----------------------------------------------------


def experiment_arms(exp: ExperimentConfig, weights: Mapping[str, float] | None = None
                    ) -> tuple[Arm, ...]:
    """The arms as the router builds them (``RouterCore.set_experiment``): in the arms
    list's order, the baseline flagged, ``weights`` (the effective ones) over the stored."""
    return tuple(
        Arm(a.version, a.weight if weights is None else float(weights[a.version]),
            baseline=a.version == exp.baseline)
        for a in exp.arms
    )


def check_sticky(exp: ExperimentConfig) -> None:
    """A batch can only reproduce a sticky split: the bandit does not follow user keys."""
    if exp.policy != "weighted":
        raise ConfigError(
            f"experiment.policy is {exp.policy!r}: the bandit ignores user keys, so no "
            "batch job can give a row the arm the router would; use --version V"
        )


def assign_arms(keys: Sequence[Any], arms: Sequence[Arm], salt: str
                ) -> tuple[list[str | None], list[int]]:
    """Each key's arm by the router's ``WeightedPolicy`` (salt: the experiment name), and
    the positions of the keys that are missing (a router would draw those at random)."""
    policy = WeightedPolicy(salt=salt)
    out: list[str | None] = []
    missing: list[int] = []
    for i, key in enumerate(keys):
        if _is_missing(key) or (isinstance(key, str) and not key):
            out.append(None)
            missing.append(i)
            continue
        text = key if isinstance(key, str) else str(_cell(key))
        out.append(policy.choose(RouteContext(user_key=text), arms).version)
    return out, missing


# --- outputs -----------------------------------------------------------------------------


def output_columns(spec: OutputSpec, outputs: np.ndarray) -> dict[str, list[Any]]:
    """``(n, width)`` outputs as columns: ``label`` (null for regression) and
    ``probabilities`` (multiclass), ``score`` (binary) or ``values`` (regression)."""
    out = np.asarray(outputs, dtype=np.float32)
    if spec.kind == REGRESSION:
        return {"label": [None] * len(out), "values": [row.tolist() for row in out]}
    idx = spec.labels_of(out)
    labels = [spec.class_labels[int(i)] for i in idx]
    if spec.kind == BINARY:
        return {"label": labels, "score": out[:, 0].tolist()}
    return {"label": labels, "probabilities": [row.tolist() for row in out]}


def output_field(kind: str) -> str:
    return {MULTICLASS: "probabilities", BINARY: "score", REGRESSION: "values"}[kind]


# --- replay ------------------------------------------------------------------------------


def replay_rows(
    spec: OutputSpec, served: np.ndarray, replayed: np.ndarray, *, rtol: float = 0.05,
    atol: float = 0.0,
) -> dict[str, Any]:
    """Per row: the served and replayed labels, whether they agree (labels for a
    classifier; every output within ``atol + rtol * |served|`` for regression) and the
    largest |difference| of the outputs (|dp| for probabilities and scores)."""
    served = np.asarray(served, dtype=np.float64).reshape(len(served), -1)
    replayed = np.asarray(replayed, dtype=np.float64).reshape(len(replayed), -1)
    if served.shape != replayed.shape:
        raise ValueError(f"served outputs {served.shape} vs replayed {replayed.shape}")
    diff = np.abs(replayed - served).max(axis=1) if served.size else np.zeros(len(served))
    agree = spec.agreement(replayed, served, rtol=rtol, atol=atol)
    cols: dict[str, Any] = {"agree": agree.astype(bool), "max_abs_diff": diff}
    if spec.classifies:
        cols["served_label"] = [spec.class_labels[int(i)] for i in spec.labels_of(served)]
        cols["replayed_label"] = [spec.class_labels[int(i)] for i in spec.labels_of(replayed)]
    return cols


def join_feedback(frame: Any, feedback: Any | None) -> Any:
    """``frame`` with the feedback table's ``label`` as ``feedback_label`` (by request_id;
    the latest feedback wins when a request got several)."""
    out = frame.copy()
    if feedback is None or len(feedback) == 0:
        out["feedback_label"] = pd.Series([None] * len(out), dtype=object)
        return out
    fb = feedback
    if "time" in fb.columns:
        fb = fb.sort_values("time", kind="stable")
    fb = fb.drop_duplicates("request_id", keep="last")[["request_id", "label"]]
    fb = fb.rename(columns={"label": "feedback_label"})
    out = out.merge(fb, on="request_id", how="left")
    labels = out["feedback_label"].astype(object)
    out["feedback_label"] = labels.where(labels.notna(), None)
    return out


def _rate(hits: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(hits, n)
    return {"n": n, "hits": hits, "rate": (hits / n) if n else None, "ci95": [low, high]}


def _confusion(true: Sequence[Any], pred: Sequence[Any], labels: Sequence[str]
               ) -> dict[str, dict[str, int]]:
    table = {t: dict.fromkeys(labels, 0) for t in labels}
    for t, p in zip(true, pred, strict=True):
        if t in table and p in table[t]:
            table[t][p] += 1
    return table


def replay_summary(frame: Any, spec: OutputSpec, version: str, *, skipped: int = 0
                   ) -> dict[str, Any]:
    """What ``abserve replay`` reports, from the per-row frame (columns ``version`` (the
    version that served), ``agree``, ``max_abs_diff``, for classifiers ``served_label``,
    ``replayed_label`` and ``feedback_label`` (null when none came)).

    ``own`` is the rows ``version`` itself answered: a replay of the same version through
    the same backend code must reproduce them (agreement 1, |dp| ~ 0).
    """
    n = len(frame)
    own = frame[frame["version"] == version]
    summary: dict[str, Any] = {
        "version": version, "kind": spec.kind, "rows": n, "skipped": skipped,
        "agreement": _rate(int(frame["agree"].sum()), n),
        "agreement_own": _rate(int(own["agree"].sum()), len(own)),
        "agreement_others": _rate(int(frame["agree"].sum() - own["agree"].sum()),
                                  n - len(own)),
        "abs_diff": {
            "mean": float(frame["max_abs_diff"].mean()) if n else None,
            "max": float(frame["max_abs_diff"].max()) if n else None,
            "max_own": float(own["max_abs_diff"].max()) if len(own) else None,
        },
        "served_by": {str(k): int(v) for k, v in frame["version"].value_counts().items()},
    }
    if not spec.classifies:
        return summary
    labels = list(spec.class_labels)
    summary["confusion_served_vs_replayed"] = _confusion(
        frame["served_label"].tolist(), frame["replayed_label"].tolist(), labels)
    with_label = frame[frame["feedback_label"].notna()]
    m = len(with_label)
    replay_hits = int((with_label["replayed_label"] == with_label["feedback_label"]).sum())
    served_hits = int((with_label["served_label"] == with_label["feedback_label"]).sum())
    summary["feedback"] = {
        "rows": m,
        "accuracy_replayed": _rate(replay_hits, m),
        "accuracy_served": _rate(served_hits, m),
        "confusion": _confusion(with_label["feedback_label"].tolist(),
                                with_label["replayed_label"].tolist(), labels),
    }
    return summary


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The replay summary as the lines ``abserve replay`` prints."""

    def rate(r: Mapping[str, Any]) -> str:
        if not r["n"]:
            return "n/a (0 rows)"
        lo, hi = r["ci95"]
        return f"{r['rate'] * 100:.2f}% of {r['n']:,} (95% CI {lo * 100:.2f}-{hi * 100:.2f}%)"

    v = summary["version"]
    d = summary["abs_diff"]
    lines = [
        f"replay of {v}: {summary['rows']:,} logged rows scored, {summary['skipped']:,} "
        f"skipped; served by {summary['served_by']}",
        f"  agreement with what was served: {rate(summary['agreement'])}",
        f"  rows {v} answered itself:        {rate(summary['agreement_own'])}",
        f"  rows other versions answered:    {rate(summary['agreement_others'])}",
    ]
    if d["mean"] is not None:
        own = "n/a" if d["max_own"] is None else f"{d['max_own']:.3g}"
        lines.append(f"  |d output|: mean {d['mean']:.4g}, max {d['max']:.4g} "
                     f"(max on {v}'s own rows: {own})")
    fb = summary.get("feedback")
    if fb is not None:
        lines.append(f"  feedback labels: {fb['rows']:,} rows")
        if fb["rows"]:
            lines.append(f"    accuracy of {v} (replayed): {rate(fb['accuracy_replayed'])}")
            lines.append(f"    accuracy of what was served: {rate(fb['accuracy_served'])}")
        confusion, title = fb["confusion"], "feedback label (rows) x replayed label"
        if not fb["rows"]:
            confusion = summary["confusion_served_vs_replayed"]
            title = "served label (rows) x replayed label"
        labels = list(confusion)
        width = max(8, *(len(x) for x in labels)) + 1
        lines.append(f"  confusion, {title}:")
        lines.append(" " * (width + 2) + "".join(f"{x:>{width}}" for x in labels))
        for t in labels:
            lines.append(f"  {t:<{width}}" + "".join(f"{confusion[t][p]:>{width}}"
                                                    for p in labels))
    return lines
