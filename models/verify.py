"""Verification windows: the inputs on which a faster inference path must equal the plain one.

At registration a small set of held-out windows (or, without any, a seeded probe
set) is saved beside the artifact as ``verify.npy``; its sha256 goes into the
manifest's ``extra["attachments"]`` like any attachment, and
``extra["verify_windows"]`` says where the windows came from. A backend verifies
its fast path on those windows again at load, falling back to the same seeded
probe set for a manifest registered before this existed.

numpy only: no framework is imported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.kinds import REGRESSION
from models.registry import Manifest, verify_attachment
from serve.errors import ArtifactError, InvalidInput

__all__ = [
    "PROBE_SEED",
    "REGRESSION_RTOL",
    "TOLERANCE",
    "VERIFY_FILE",
    "VERIFY_ROWS",
    "check_windows",
    "max_abs_diff",
    "output_diff",
    "probe_inputs",
    "probe_rows",
    "probe_windows",
    "read_windows",
    "sample_windows",
    "verification_windows",
    "window_dtype",
    "write_windows",
]

log = logging.getLogger(__name__)

VERIFY_FILE = "verify.npy"
VERIFY_ROWS = 64
# Keep the file small whatever the input shape: at most this many bytes of windows
# (but two windows at least, so a batch and a single row can both be compared).
VERIFY_MAX_BYTES = 8 << 20
PROBE_SEED = 15_003
# Largest |difference| between a fast path's probabilities and the plain call's.
TOLERANCE = 1e-6
# Regression values have no common scale, so a fast path's values are compared relative to
# each output column's largest |value| on the windows, within the same 1e-6: the budget
# probabilities get (their scale is 1), about 8 float32 ulps of the column's largest value.
# The fast paths here replay the plain call's own kernels (bitwise equal in practice), so
# anything beyond a few ulps is a real difference, not rounding.
REGRESSION_RTOL = TOLERANCE


def window_dtype(manifest: Manifest) -> type[np.floating[Any]]:
    """The dtype a model's inputs (and its verification windows) are held in: float64 for
    tabular rows (integers and category indices stay exact), float32 for tensors."""
    return np.float64 if manifest.input_dtype == "float64" else np.float32


def _rows_for(input_shape: Sequence[int], rows: int) -> int:
    per_row = 4 * math.prod(input_shape)
    return max(min(rows, 2), min(rows, VERIFY_MAX_BYTES // max(per_row, 1)))


def probe_windows(
    input_shape: Sequence[int], rows: int = VERIFY_ROWS, seed: int = PROBE_SEED
) -> np.ndarray:
    """A deterministic float32 probe set of ``(rows, *input_shape)``: seeded normal noise
    at a few scales, so features and thresholds see small and large values alike."""
    n = _rows_for(input_shape, rows)
    rng = np.random.default_rng(seed)
    scale = np.geomspace(0.1, 10.0, n).reshape(n, *([1] * len(input_shape)))
    return np.ascontiguousarray(rng.standard_normal((n, *input_shape)) * scale, np.float32)


def probe_rows(fields: Sequence[Any], rows: int = VERIFY_ROWS, seed: int = PROBE_SEED
               ) -> np.ndarray:
    """A deterministic float64 probe set for a tabular schema's fields (``Schema.fields``):
    one valid encoded value per field and row, so ``to_frame`` and the model accept every
    row. Floats: seeded normal noise at a few scales; ints: the same noise rounded; bools:
    0 or 1; categories: each index in turn, so every category is seen."""
    n = _rows_for((len(fields),), rows)
    rng = np.random.default_rng(seed)
    scale = np.geomspace(0.1, 10.0, n)
    out = np.empty((n, len(fields)), dtype=np.float64)
    for j, f in enumerate(fields):
        dtype = getattr(f, "dtype", "float")
        if dtype == "category":
            k = max(len(getattr(f, "categories", ()) or ()), 1)
            out[:, j] = (np.arange(n) + j) % k
        elif dtype == "bool":
            out[:, j] = rng.integers(0, 2, n)
        elif dtype == "int":
            out[:, j] = np.rint(rng.standard_normal(n) * scale * 10.0)
        else:
            out[:, j] = rng.standard_normal(n) * scale
    return np.ascontiguousarray(out)


def check_windows(
    windows: Any, input_shape: Sequence[int], dtype: Any = np.float32
) -> np.ndarray:
    """``windows`` as C-contiguous finite ``dtype`` ``(n, *input_shape)``, or InvalidInput."""
    try:
        arr = np.asarray(windows, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"verification windows are not numeric: {exc}") from exc
    shape = tuple(input_shape)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise InvalidInput(
            f"verification windows must have shape (n, {', '.join(map(str, shape))}), "
            f"got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidInput("verification windows hold NaN or infinite values")
    return np.ascontiguousarray(arr)


def sample_windows(
    windows: Any, input_shape: Sequence[int], rows: int = VERIFY_ROWS, dtype: Any = np.float32
) -> np.ndarray:
    """The first ``rows`` held-out windows (fewer for large inputs), checked."""
    arr = check_windows(windows, input_shape, dtype)
    return np.ascontiguousarray(arr[: _rows_for(input_shape, rows)])


def write_windows(path: str | Path, windows: np.ndarray, dtype: Any = np.float32) -> Path:
    """Save windows as ``.npy`` in ``dtype`` (float64 for tabular rows, else float32)."""
    path = Path(path)
    np.save(path, np.ascontiguousarray(windows, dtype=dtype), allow_pickle=False)
    return path


def read_windows(
    path: str | Path, input_shape: Sequence[int], dtype: Any = np.float32
) -> np.ndarray:
    """Windows saved by ``write_windows``; never unpickles anything."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read verification windows {path}: {exc}") from exc
    try:
        return check_windows(arr, input_shape, dtype)
    except InvalidInput as exc:
        raise ArtifactError(f"verification windows {path}: {exc.message}") from exc


def probe_inputs(manifest: Manifest) -> np.ndarray:
    """The seeded probe set for a manifest: schema rows (float64) for a tabular model,
    else the float32 windows of its input shape."""
    if manifest.input_schema is not None:
        from models.schema import Schema

        return probe_rows(Schema.parse(manifest.input_schema).fields)
    return probe_windows(manifest.input_shape)


def verification_windows(manifest: Manifest, directory: str | Path) -> tuple[np.ndarray, str]:
    """The windows to verify a fast path on at load, and where they came from.

    The registered ``verify.npy`` when the manifest names it and its sha256 holds
    ("held-out" or "probe", as recorded at registration); else the seeded probe set
    ("probe", with a warning when a registered file was missing or changed). Tabular
    models get float64 rows of their schema.
    """
    info = manifest.extra.get("verify_windows")
    if isinstance(info, dict) and isinstance(info.get("file"), str):
        try:
            path = verify_attachment(manifest, directory, info["file"])
            windows = read_windows(path, manifest.input_shape, window_dtype(manifest))
            return windows, str(info.get("source", "held-out"))
        except ArtifactError as exc:
            log.warning(
                "%s %s: %s; verifying on the seeded probe windows instead",
                manifest.name, manifest.version, exc.message,
            )
    return probe_inputs(manifest), "probe"


def output_diff(got: Any, ref: Any, kind: str) -> float:
    """How far a fast path's outputs are from the plain call's, in the unit ``TOLERANCE``
    bounds: max |difference| for probabilities and scores; for regression, max |difference|
    relative to each column's largest |reference value| (see ``REGRESSION_RTOL``)."""
    if kind != REGRESSION:
        return max_abs_diff(got, ref)
    diff = max_abs_diff(got, ref)
    if not math.isfinite(diff):
        return diff
    x = np.asarray(got, dtype=np.float64)
    y = np.asarray(ref, dtype=np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    scale = np.maximum(np.abs(y).max(axis=0), np.finfo(np.float32).tiny)
    return float((np.abs(x - y) / scale).max())


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over two arrays of one shape; inf when shapes differ or a value is not
    finite, so a broken fast path can never pass a tolerance."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        return math.inf
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.inf
    return float(np.abs(x - y).max())
