"""The sklearn backend serves forests through the verified tree loop: on the real trained v1
artifact it equals predict_proba within 1e-6 (bitwise, in fact) on the held-out windows
registered beside it; an estimator the loop cannot represent exactly, or a loop that fails
its check, falls back to predict_proba, and the manifest and the backend say so."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)

from deployments.backends import load_backend
from models import Manifest, Registry, register_user_model
from models.activity.data import CLASS_LABELS, make_windows
from models.activity.train import MODEL_NAME, train_all
from models.forest import PREDICT_PROBA, TREE_LOOP
from models.registry import MANIFEST_FILE
from models.verify import TOLERANCE, VERIFY_FILE
from tests.unit.test_forest import SharpenedForest, _pipe, _tamper_after_compile

SHAPE = (50, 9)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The real v1 recipe (50 trees, min_samples_leaf=2), on fewer windows."""
    root = tmp_path_factory.mktemp("registry")
    train_all(root, seed=3, n_train=800, n_test=200, quiet=True, versions=("v1",))
    return Registry(root)


@pytest.fixture(scope="module")
def v1(registry: Registry) -> Manifest:
    return registry.manifest(MODEL_NAME, "v1")


def _served_vs_own(backend: Any, est: Any, X: np.ndarray) -> float:
    """max |dp| between what the backend serves and the estimator's own predict_proba."""
    return float(np.abs(backend.predict(X) - est.predict_proba(X)).max())


def test_trained_v1_records_and_serves_the_tree_loop(registry: Registry, v1: Manifest) -> None:
    assert v1.extra["inference_path"] == TREE_LOOP
    assert v1.extra["inference_path_max_dp"] == 0.0
    assert "inference_path_reason" not in v1.extra
    assert v1.extra["verify_windows"] == {"file": VERIFY_FILE, "rows": 64, "source": "held-out"}
    held_out = np.load(registry.verified_attachment(v1, VERIFY_FILE))
    assert held_out.shape == (64, *SHAPE)

    backend = load_backend(v1, registry.verified_artifact(v1))
    assert backend.inference_path == TREE_LOOP  # type: ignore[attr-defined]
    assert backend.inference_path_max_dp == 0.0  # type: ignore[attr-defined]
    est = joblib.load(registry.verified_artifact(v1))
    est.set_params(forest__n_jobs=1)
    assert est.steps[-1][1].n_estimators == 50
    fast = backend._predict_proba  # type: ignore[attr-defined]
    fresh = make_windows(200, seed=4242)[0]
    for X in (held_out, fresh, fresh[:1], fresh[:14]):
        # the loop itself: bitwise; through the backend: the float32 of the same numbers
        np.testing.assert_array_equal(fast(X), est.predict_proba(X))
        assert _served_vs_own(backend, est, X) <= TOLERANCE


def test_old_manifest_without_the_new_fields_loads(
    registry: Registry, v1: Manifest, tmp_path: Path
) -> None:
    """A v1 registered before verify windows existed: no extra fields, no verify.npy."""
    old = Registry(tmp_path / "old")
    version_dir = old.version_dir(MODEL_NAME, "v1")
    version_dir.mkdir(parents=True)
    artifact = registry.verified_artifact(v1)
    (version_dir / v1.artifact).write_bytes(artifact.read_bytes())
    data = v1.to_dict()
    data["extra"] = {"output": "probabilities"}
    (version_dir / MANIFEST_FILE).write_text(json.dumps(data))
    m = old.manifest(MODEL_NAME, "v1")
    backend = load_backend(m, old.verified_artifact(m))
    assert backend.inference_path == TREE_LOOP  # type: ignore[attr-defined]
    X = make_windows(16, seed=5)[0]
    np.testing.assert_array_equal(
        backend.predict(X), load_backend(v1, registry.verified_artifact(v1)).predict(X)
    )


def test_swapped_verify_windows_verify_on_the_probe_set(
    registry: Registry, v1: Manifest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = Registry(tmp_path / "copy")
    src = registry.version_dir(MODEL_NAME, "v1")
    dst = copy.version_dir(MODEL_NAME, "v1")
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    np.save(dst / VERIFY_FILE, np.zeros((4, *SHAPE), np.float32))
    m = copy.manifest(MODEL_NAME, "v1")
    with caplog.at_level(logging.WARNING):
        backend = load_backend(m, copy.verified_artifact(m))
    assert "sha256" in caplog.text and "probe" in caplog.text
    assert backend.inference_path == TREE_LOOP  # type: ignore[attr-defined]


def test_loop_failing_its_check_at_load_falls_back(
    registry: Registry, v1: Manifest, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _tamper_after_compile(monkeypatch)
    with caplog.at_level(logging.WARNING):
        backend = load_backend(v1, registry.verified_artifact(v1))
    assert backend.inference_path == PREDICT_PROBA  # type: ignore[attr-defined]
    assert backend.inference_path_max_dp > TOLERANCE  # type: ignore[attr-defined]
    assert "differs from predict_proba" in backend.inference_path_reason  # type: ignore[attr-defined]
    assert "serving predict_proba" in caplog.text
    assert "registered to serve through forest-tree-loop" in caplog.text
    est = backend._est  # type: ignore[attr-defined]  # the tampered estimator
    X = make_windows(16, seed=6)[0]
    assert _served_vs_own(backend, est, X) <= TOLERANCE


@pytest.mark.parametrize(
    ("make", "path", "reason"),
    [
        (lambda: _pipe(RandomForestClassifier(10, min_samples_leaf=2, random_state=0)),
         TREE_LOOP, None),
        (lambda: _pipe(ExtraTreesClassifier(10, random_state=0)), TREE_LOOP, None),
        (lambda: RandomForestClassifier(10, random_state=0), TREE_LOOP, None),
        (lambda: _pipe(SharpenedForest(n_estimators=10, random_state=0)), PREDICT_PROBA,
         "SharpenedForest overrides RandomForestClassifier.predict_proba"),
        (lambda: _pipe(GradientBoostingClassifier(n_estimators=5, random_state=0)), PREDICT_PROBA,
         "GradientBoostingClassifier is not a RandomForest"),
    ],
    ids=["random-forest", "extra-trees", "bare-forest-on-flat-windows",
         "subclass-overriding-predict_proba", "gradient-boosting"],
)
def test_user_estimators_register_and_serve_the_recorded_path(
    tmp_path: Path, make: Any, path: str, reason: str | None
) -> None:
    X, y = make_windows(320, seed=8)
    held_out = make_windows(80, seed=9)[0]
    est = make()
    flat = not hasattr(est, "steps")
    est.fit(X.reshape(len(X), -1) if flat else X, y)
    artifact = tmp_path / "user.joblib"
    joblib.dump(est, artifact)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "mine", "v1", "sklearn", artifact, input_shape=SHAPE,
                            class_labels=CLASS_LABELS, verify_windows=held_out)
    assert m.extra["inference_path"] == path
    if reason is None:
        assert m.extra["inference_path_max_dp"] == 0.0
    else:
        assert m.extra["inference_path_max_dp"] is None
        assert reason in m.extra["inference_path_reason"]
    backend = load_backend(m, reg.verified_artifact(m))
    assert backend.inference_path == path  # type: ignore[attr-defined]
    Xs = held_out.reshape(len(held_out), -1) if flat else held_out
    np.testing.assert_allclose(backend.predict(held_out), est.predict_proba(Xs), atol=TOLERANCE,
                               rtol=0)


def test_tree_loop_is_the_faster_call(registry: Registry, v1: Manifest) -> None:
    """Not a benchmark (benchmarks/model_paths.py is): only that the loop is not slower."""
    import time

    backend = load_backend(v1, registry.verified_artifact(v1))
    est = backend._est  # type: ignore[attr-defined]
    fast = backend._predict_proba  # type: ignore[attr-defined]
    X = make_windows(1, seed=1)[0]

    def best(fn: Any) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            fn(X)
            times.append(time.perf_counter() - start)
        return min(times)

    assert backend.inference_path == TREE_LOOP  # type: ignore[attr-defined]
    assert best(fast) < best(est.predict_proba)
