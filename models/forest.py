"""An exact, faster ``predict_proba`` for scikit-learn forests, and the choice of which path serves.

scikit-learn's ``ForestClassifier.predict_proba`` hands every tree to joblib, even
with ``n_jobs=1``; for the 1-64 rows of a serving call that dispatch is most of the
time (about 2.5 ms of the forest's 2.6 ms for v1's 50 trees at one row). The tree
loop here does what it does without the dispatch: the same float32 input, each
tree's own compiled ``Tree.predict`` summed in float64 in tree order, divided by the
number of trees. Same code on the same numbers in the same order, so the result is
bitwise equal, not only close (benchmarks/model_paths.py measures the alternatives:
a compiled tl2cgen library is exact too but needs gcc and a 20 s build at load;
ONNX Runtime is faster still but computes in float32, off by up to 4e-7).

``compile_forest`` refuses (with the reason) whatever it cannot represent exactly:
other estimators, subclasses or instances that override ``predict_proba``, more
than one output. ``choose_path`` then verifies the tree loop against the
estimator's own ``predict_proba`` on verification windows and falls back to
``predict_proba`` when they differ by more than ``TOLERANCE``. Registration records
the choice in the manifest (``extra["inference_path"]``); the sklearn backend makes
it again at load, and serves the path it verified.

scikit-learn is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.kinds import REGRESSION
from models.verify import TOLERANCE, max_abs_diff
from serve.errors import ArtifactError

__all__ = [
    "PREDICT",
    "PREDICT_PROBA",
    "TREE_LOOP",
    "InferencePath",
    "choose_path",
    "class_columns",
    "compile_forest",
    "needs_flatten",
    "registration_extra",
    "regression_path",
    "set_single_threaded",
]

log = logging.getLogger(__name__)

TREE_LOOP = "forest-tree-loop"
PREDICT_PROBA = "predict_proba"
PREDICT = "predict"  # a regression model's own call

Proba = Callable[[Any], np.ndarray]


@dataclass(frozen=True)
class InferencePath:
    """Which call serves, why, and how far it was from ``predict_proba`` when verified."""

    name: str
    predict_proba: Proba
    max_dp: float | None = None  # None: not compared (no fast path to compare)
    reason: str = ""  # why the fast path does not serve; "" when it does
    rows: int = 0  # verification windows compared

    def to_extra(self) -> dict[str, Any]:
        """The manifest's record of this choice (JSON-safe)."""
        out: dict[str, Any] = {"inference_path": self.name}
        out["inference_path_max_dp"] = (
            None if self.max_dp is None or not math.isfinite(self.max_dp) else self.max_dp
        )
        if self.reason:
            out["inference_path_reason"] = self.reason
        return out


def _owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines attribute ``name``."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return None


def _overrides(obj: Any, stock: type, names: Sequence[str]) -> str | None:
    """The first of ``names`` that ``obj`` (its class or the instance itself) defines
    differently from the stock scikit-learn class, else None."""
    for name in names:
        if name in vars(obj) or _owner(type(obj), name) is not _owner(stock, name):
            return name
    return None


def compile_forest(est: Any) -> tuple[Proba | None, str]:
    """``(fast predict_proba, "")`` for a fitted RandomForestClassifier or
    ExtraTreesClassifier, alone or as the last step of Pipelines; ``(None, reason)``
    for anything it cannot represent exactly."""
    try:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
        from sklearn.pipeline import Pipeline
    except ImportError as exc:
        return None, f"scikit-learn is not importable ({exc})"
    if isinstance(est, Pipeline):
        return _compile_pipeline(est, Pipeline)
    if isinstance(est, RandomForestClassifier | ExtraTreesClassifier):
        stock = RandomForestClassifier if isinstance(est, RandomForestClassifier) else (
            ExtraTreesClassifier
        )
        return _compile_forest(est, stock)
    return None, f"{type(est).__name__} is not a RandomForest or ExtraTrees classifier"


def _compile_pipeline(pipe: Any, stock: type) -> tuple[Proba | None, str]:
    changed = _overrides(pipe, stock, ("predict_proba",))
    if changed:
        return None, f"{type(pipe).__name__} overrides Pipeline.{changed}"
    if not pipe.steps:
        return None, "the pipeline has no steps"
    # What Pipeline.predict_proba runs: each transform but 'passthrough'/None, in order.
    head = tuple(t for _, t in pipe.steps[:-1] if t is not None and t != "passthrough")
    if not all(hasattr(t, "transform") for t in head):
        return None, "a pipeline step has no transform"
    final_fast, reason = compile_forest(pipe.steps[-1][1])
    if final_fast is None:
        return None, f"final step: {reason}"
    inner: Proba = final_fast

    def pipeline_proba(X: Any) -> np.ndarray:
        Xt = X
        for step in head:
            Xt = step.transform(Xt)
        return inner(Xt)

    return pipeline_proba, ""


def _compile_forest(forest: Any, stock: type) -> tuple[Proba | None, str]:
    try:
        from sklearn.tree import DecisionTreeClassifier
        from sklearn.tree._tree import Tree
    except ImportError as exc:  # a scikit-learn that moved its Tree: stay on predict_proba
        return None, f"scikit-learn's Tree is not importable ({exc})"

    name = type(forest).__name__
    changed = _overrides(forest, stock, ("predict_proba", "_validate_X_predict"))
    if changed:
        return None, f"{name} overrides {stock.__name__}.{changed}"
    trees = getattr(forest, "estimators_", None)
    if not trees:
        return None, f"{name} is not fitted"
    if getattr(forest, "n_outputs_", None) != 1:
        return None, f"{name} has {getattr(forest, 'n_outputs_', '?')} outputs, not 1"
    n_classes = forest.n_classes_
    if not isinstance(n_classes, int | np.integer) or int(n_classes) != len(forest.classes_):
        return None, f"{name} has an unexpected n_classes_ {n_classes!r}"
    k = int(n_classes)
    n_features = getattr(forest, "n_features_in_", None)
    if not isinstance(n_features, int | np.integer):
        return None, f"{name} has no n_features_in_"
    for i, tree in enumerate(trees):
        if not isinstance(tree, DecisionTreeClassifier):
            return None, f"tree {i} is a {type(tree).__name__}, not a DecisionTreeClassifier"
        changed = _overrides(tree, DecisionTreeClassifier, ("predict_proba", "_validate_X_predict"))
        if changed:
            return None, f"tree {i} ({type(tree).__name__}) overrides {changed}"
        inner = getattr(tree, "tree_", None)
        if inner is None or type(inner) is not Tree:
            return None, f"tree {i} has no scikit-learn Tree"
        if tree.n_outputs_ != 1 or inner.n_outputs != 1:
            return None, f"tree {i} has more than one output"
        if int(tree.n_classes_) != k or inner.max_n_classes < k:
            return None, f"tree {i} has {tree.n_classes_} classes, the forest {k}"
    compiled = tuple(t.tree_ for t in trees)
    n_trees = len(trees)
    n_feat = int(n_features)
    own = forest.predict_proba

    def forest_proba(X: Any) -> np.ndarray:
        # Anything but a plain finite float matrix of the fitted width goes to
        # scikit-learn itself, for its own checks, conversions and errors.
        if not (
            isinstance(X, np.ndarray)
            and X.ndim == 2
            and X.shape[0] > 0
            and X.shape[1] == n_feat
            and X.dtype.kind == "f"
            and np.isfinite(X).all()
        ):
            return own(X)
        # ForestClassifier.predict_proba: X as float32, a float64 sum of each tree's
        # predict_proba (Tree.predict sliced to the classes) in tree order, / n_trees.
        F = np.ascontiguousarray(X, dtype=np.float32)
        out = np.zeros((F.shape[0], k), dtype=np.float64)
        for tree in compiled:
            out += tree.predict(F)[:, :k]
        out /= n_trees
        return out

    return forest_proba, ""


def choose_path(est: Any, x: np.ndarray, tolerance: float = TOLERANCE) -> InferencePath:
    """The tree loop if it compiles and equals ``est.predict_proba`` within ``tolerance``
    on ``x`` (as a batch and row by row for the first rows), else ``predict_proba``."""
    fast, reason = compile_forest(est)
    if fast is None:
        return InferencePath(PREDICT_PROBA, est.predict_proba, None, reason, 0)
    worst = 0.0
    batches = [x, *(x[i : i + 1] for i in range(min(2, len(x))))]
    for batch in batches:
        try:
            ref = est.predict_proba(batch)
        except Exception as exc:  # the estimator's own failure: it serves and says so
            return InferencePath(
                PREDICT_PROBA, est.predict_proba, None,
                f"predict_proba failed on the verification windows ({exc})", len(x),
            )
        try:
            got = fast(batch)
        except Exception as exc:
            return InferencePath(
                PREDICT_PROBA, est.predict_proba, None, f"the tree loop failed ({exc})", len(x)
            )
        worst = max(worst, max_abs_diff(got, ref))
    if not worst <= tolerance:
        return InferencePath(
            PREDICT_PROBA, est.predict_proba, worst,
            f"the tree loop differs from predict_proba by {worst:.3g} > {tolerance:g} "
            f"on {len(x)} verification windows",
            len(x),
        )
    return InferencePath(TREE_LOOP, fast, worst, "", len(x))


def regression_path(est: Any) -> InferencePath:
    """A regression model serves through its own ``predict``: the tree loop reproduces
    forest classifiers' ``predict_proba`` only, so it is refused here with that reason."""
    return InferencePath(
        PREDICT, est.predict, None,
        "the tree loop serves forest classifiers only; a regression model is served by predict",
    )


def class_columns(classes: Any, labels: tuple[str, ...]) -> np.ndarray:
    """Column in the manifest's label order for each of the estimator's ``classes_``
    (label strings, label indices, or False/True for a binary model's two labels)."""
    cols = []
    for c in list(classes):
        if isinstance(c, bool | np.bool_) and len(labels) == 2:
            cols.append(int(c))
        elif isinstance(c, str | np.str_):
            if c not in labels:
                raise ArtifactError(
                    f"estimator class {c!r} is not among the manifest's class_labels {list(labels)}"
                )
            cols.append(labels.index(str(c)))
        elif isinstance(c, int | np.integer) and not isinstance(c, bool | np.bool_):
            if not 0 <= int(c) < len(labels):
                raise ArtifactError(
                    f"estimator class {int(c)} does not index the {len(labels)} class_labels"
                )
            cols.append(int(c))
        else:
            raise ArtifactError(
                f"estimator classes must be label strings or label indices, got {c!r}"
            )
    if len(set(cols)) != len(cols):
        raise ArtifactError("estimator classes_ map twice onto the same class label")
    return np.asarray(cols, dtype=np.intp)


def set_single_threaded(est: Any) -> None:
    """``n_jobs=1`` everywhere in ``est``: replicas share few cores, no nested parallelism."""
    params = est.get_params(deep=True) if hasattr(est, "get_params") else {}
    n_jobs = {k: 1 for k in params if k == "n_jobs" or k.endswith("__n_jobs")}
    if n_jobs:
        est.set_params(**n_jobs)


def needs_flatten(est: Any, input_shape: Sequence[int], extra: dict[str, Any]) -> bool:
    """Flatten each instance for estimators fitted on 2-D rows of prod(input_shape)."""
    if "flatten" in extra:
        return bool(extra["flatten"])
    if len(input_shape) < 2:
        return False
    return getattr(est, "n_features_in_", None) == math.prod(input_shape)


def estimator_input(
    est: Any, windows: np.ndarray, input_shape: Sequence[int], extra: dict[str, Any],
    input_schema: Sequence[dict[str, Any]] | None = None,
) -> Any:
    """What the estimator is called on for ``windows``: the schema's DataFrame for a tabular
    model, the flattened rows for one fitted on flattened windows, else the windows."""
    if input_schema is not None:
        from models.schema import Schema

        return Schema.parse(input_schema).to_frame(windows)
    if needs_flatten(est, input_shape, extra):
        return windows.reshape(len(windows), -1)
    return windows


def registration_extra(
    artifact: str | Path, input_shape: Sequence[int], extra: dict[str, Any], windows: np.ndarray,
    *, kind: str = "multiclass", input_schema: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Load the estimator about to be registered, choose its path on ``windows`` and
    return the manifest entries recording it. Never raises: an estimator that cannot be
    loaded or verified here is recorded as served by ``predict_proba`` (``predict`` for
    regression), with the reason (the backend decides again at load)."""
    try:
        import joblib

        est = joblib.load(artifact)
        set_single_threaded(est)
        if kind == REGRESSION:
            choice = regression_path(est)
        else:
            choice = choose_path(est, estimator_input(est, windows, input_shape, extra,
                                                      input_schema))
    except Exception as exc:
        log.warning("cannot verify %s at registration: %s", artifact, exc)
        choice = InferencePath(
            PREDICT if kind == REGRESSION else PREDICT_PROBA, lambda X: X, None,
            f"not verified at registration: cannot load or call the estimator ({exc})",
        )
    return choice.to_extra()
