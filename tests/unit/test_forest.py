"""The exact forest path (models.forest), the verification windows and the registry's
attachments: the tree loop equals predict_proba bitwise where it applies and is refused,
with its reason, where it cannot represent the estimator exactly. No Ray, no torch."""

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
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import models.forest as forest_mod
from models import Manifest, Registry, register_user_model
from models.activity.data import CLASS_LABELS, make_windows
from models.activity.features import window_stats
from models.forest import PREDICT_PROBA, TREE_LOOP, choose_path, compile_forest
from models.registry import MANIFEST_FILE, sha256_file, verify_attachment
from models.verify import (
    TOLERANCE,
    VERIFY_FILE,
    probe_windows,
    verification_windows,
    write_windows,
)
from serve.errors import ArtifactError, InvalidInput

SHAPE = (50, 9)


class SharpenedForest(RandomForestClassifier):
    """A forest whose predict_proba is not the trees' mean: the loop must refuse it."""

    def predict_proba(self, X: Any) -> np.ndarray:
        p = super().predict_proba(X) ** 2
        return p / p.sum(axis=1, keepdims=True)


class QuietForest(RandomForestClassifier):
    """A subclass that changes nothing about prediction: the loop may serve it."""


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_windows(480, seed=11)
    held_out = make_windows(96, seed=12)[0]
    return X, y, held_out


def _pipe(forest: Any) -> Pipeline:
    return Pipeline([("stats", FunctionTransformer(window_stats)), ("forest", forest)])


def _fit(est: Any, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
    X, y, _ = data
    return est.fit(X, y)


def _assert_bitwise(est: Any, X: np.ndarray) -> None:
    fast, reason = compile_forest(est)
    assert fast is not None, reason
    for batch in (X, X[:1], X[:14]):
        np.testing.assert_array_equal(fast(batch), est.predict_proba(batch))


@pytest.mark.parametrize(
    "forest",
    [
        RandomForestClassifier(n_estimators=20, min_samples_leaf=2, random_state=0),
        ExtraTreesClassifier(n_estimators=20, random_state=0),
        RandomForestClassifier(n_estimators=7, max_depth=4, class_weight="balanced",
                               random_state=1),
        QuietForest(n_estimators=5, random_state=2),
    ],
    ids=["random-forest", "extra-trees", "shallow-weighted", "plain-subclass"],
)
def test_tree_loop_equals_predict_proba_bitwise_in_a_pipeline(forest: Any, data: Any) -> None:
    _assert_bitwise(_fit(_pipe(forest), data), data[2])


def test_tree_loop_on_a_bare_forest_and_string_classes(data: Any) -> None:
    X, y, held_out = data
    feats = window_stats(X)
    names = np.asarray(CLASS_LABELS)[y]
    for est in (RandomForestClassifier(n_estimators=10, random_state=0).fit(feats, names),
                ExtraTreesClassifier(n_estimators=10, random_state=0).fit(feats, y)):
        _assert_bitwise(est, window_stats(held_out))
        # float64 input is cast to float32 exactly as scikit-learn casts it
        _assert_bitwise(est, window_stats(held_out).astype(np.float64) * 1.0000001)


def test_nested_pipeline_with_passthrough_steps(data: Any) -> None:
    inner = Pipeline([("scale", StandardScaler()), ("skip", "passthrough"),
                      ("forest", RandomForestClassifier(n_estimators=8, random_state=3))])
    outer = Pipeline([("stats", FunctionTransformer(window_stats)), ("none", None),
                      ("model", inner)])
    _assert_bitwise(_fit(outer, data), data[2])


def test_input_the_loop_does_not_own_goes_to_scikit_learn(data: Any) -> None:
    est = _fit(RandomForestClassifier(n_estimators=5, random_state=0), (
        window_stats(data[0]), data[1], None))
    fast, _ = compile_forest(est)
    assert fast is not None
    bad = window_stats(data[2][:3])
    bad[1, 4] = np.nan  # scikit-learn's trees route missing values; the loop hands them on
    np.testing.assert_array_equal(fast(bad), est.predict_proba(bad))
    with pytest.raises(ValueError, match="features"):
        est.predict_proba(bad[:, :10])
    with pytest.raises(ValueError, match="features"):
        fast(bad[:, :10])
    rows = window_stats(data[2][:3]).tolist()  # a list, not an array: scikit-learn converts it
    np.testing.assert_array_equal(fast(rows), est.predict_proba(rows))


def test_multi_output_forest_refused(data: Any) -> None:
    X, y, _ = data
    two = np.stack([y, y % 2], axis=1)
    est = RandomForestClassifier(n_estimators=4, random_state=0).fit(window_stats(X), two)
    fast, reason = compile_forest(est)
    assert fast is None and "outputs" in reason


@pytest.mark.parametrize(
    ("est", "expected"),
    [
        (GradientBoostingClassifier(n_estimators=3), "not a RandomForest"),
        (SharpenedForest(n_estimators=5, random_state=0), "SharpenedForest overrides"),
    ],
    ids=["gradient-boosting", "subclass-overriding-predict_proba"],
)
def test_refused_with_a_reason(est: Any, expected: str, data: Any) -> None:
    est = _fit(_pipe(est), data)
    fast, reason = compile_forest(est)
    assert fast is None and expected in reason
    choice = choose_path(est, data[2])
    assert choice.name == PREDICT_PROBA and expected in choice.reason
    assert choice.predict_proba == est.predict_proba
    assert choice.to_extra()["inference_path_max_dp"] is None


def test_unfitted_forest_refused() -> None:
    fast, reason = compile_forest(_pipe(RandomForestClassifier(n_estimators=5)))
    assert fast is None and "not fitted" in reason


def test_instance_and_tree_level_overrides_refused(data: Any) -> None:
    est = _fit(_pipe(RandomForestClassifier(n_estimators=4, random_state=0)), data)
    forest = est.steps[-1][1]
    forest.estimators_[2].predict_proba = lambda X, check_input=True: None  # type: ignore[method-assign]
    fast, reason = compile_forest(est)
    assert fast is None and "tree 2" in reason and "predict_proba" in reason
    del forest.estimators_[2].predict_proba
    forest.predict_proba = lambda X: None  # type: ignore[method-assign]
    fast, reason = compile_forest(est)
    assert fast is None and "overrides" in reason


def _tamper_after_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile the loop, then swap one tree of the estimator: the loop keeps the old one."""
    real = forest_mod.compile_forest

    def tampering(est: Any) -> Any:
        fast, reason = real(est)
        forest = est.steps[-1][1] if isinstance(est, Pipeline) else est
        forest.estimators_[0] = forest.estimators_[1]
        return fast, reason

    monkeypatch.setattr(forest_mod, "compile_forest", tampering)


def test_choose_path_verifies_and_falls_back(data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    est = _fit(_pipe(RandomForestClassifier(n_estimators=6, random_state=0)), data)
    choice = choose_path(est, data[2])
    assert choice.name == TREE_LOOP and choice.max_dp == 0.0 and choice.reason == ""
    assert choice.to_extra() == {"inference_path": TREE_LOOP, "inference_path_max_dp": 0.0}

    _tamper_after_compile(monkeypatch)
    refused = choose_path(est, data[2])
    assert refused.name == PREDICT_PROBA
    assert refused.max_dp is not None and refused.max_dp > TOLERANCE
    assert "differs from predict_proba" in refused.reason
    extra = refused.to_extra()
    assert extra["inference_path"] == PREDICT_PROBA and extra["inference_path_max_dp"] > TOLERANCE
    np.testing.assert_array_equal(refused.predict_proba(data[2]), est.predict_proba(data[2]))


# --------------------------------------------------------------------------- registration


def _dump(est: Any, tmp_path: Path, name: str = "m.joblib") -> Path:
    path = tmp_path / name
    joblib.dump(est, path)
    return path


def test_register_user_forest_records_the_path(tmp_path: Path, data: Any) -> None:
    est = _fit(_pipe(RandomForestClassifier(n_estimators=6, random_state=0)), data)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "f", "v1", "sklearn", _dump(est, tmp_path),
                            input_shape=SHAPE, class_labels=CLASS_LABELS,
                            verify_windows=data[2])
    assert m.extra["inference_path"] == TREE_LOOP
    assert m.extra["inference_path_max_dp"] == 0.0
    assert m.extra["verify_windows"] == {"file": VERIFY_FILE, "rows": 64, "source": "held-out"}
    path = reg.verified_attachment(m, VERIFY_FILE)
    np.testing.assert_array_equal(np.load(path), data[2][:64])
    assert reg.manifest("f", "v1") == m


def test_register_user_forest_without_windows_uses_the_probe_set(tmp_path: Path, data: Any) -> None:
    est = _fit(_pipe(ExtraTreesClassifier(n_estimators=6, random_state=0)), data)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "f", "v1", "sklearn", _dump(est, tmp_path),
                            input_shape=SHAPE, class_labels=CLASS_LABELS)
    assert m.extra["inference_path"] == TREE_LOOP
    assert m.extra["verify_windows"]["source"] == "probe"
    np.testing.assert_array_equal(np.load(reg.verified_attachment(m, VERIFY_FILE)),
                                  probe_windows(SHAPE))


@pytest.mark.parametrize(
    ("est", "reason"),
    [(SharpenedForest(n_estimators=5, random_state=0), "SharpenedForest overrides"),
     (GradientBoostingClassifier(n_estimators=3, random_state=0), "not a RandomForest")],
    ids=["overriding-subclass", "gradient-boosting"],
)
def test_register_refused_estimator_records_predict_proba(
    tmp_path: Path, data: Any, est: Any, reason: str
) -> None:
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "f", "v1", "sklearn", _dump(_fit(_pipe(est), data), tmp_path),
                            input_shape=SHAPE, class_labels=CLASS_LABELS)
    assert m.extra["inference_path"] == PREDICT_PROBA
    assert m.extra["inference_path_max_dp"] is None
    assert reason in m.extra["inference_path_reason"]


def test_register_records_a_failed_verification(
    tmp_path: Path, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    est = _fit(_pipe(RandomForestClassifier(n_estimators=6, random_state=0)), data)
    _tamper_after_compile(monkeypatch)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "f", "v1", "sklearn", _dump(est, tmp_path),
                            input_shape=SHAPE, class_labels=CLASS_LABELS)
    assert m.extra["inference_path"] == PREDICT_PROBA
    assert m.extra["inference_path_max_dp"] > TOLERANCE
    assert "differs from predict_proba" in m.extra["inference_path_reason"]


def test_register_unloadable_sklearn_bytes_still_registers(tmp_path: Path) -> None:
    path = tmp_path / "junk.joblib"
    path.write_bytes(b"not a pickle")
    m = register_user_model(Registry(tmp_path / "reg"), "j", "v1", "sklearn", path,
                            input_shape=SHAPE, class_labels=CLASS_LABELS)
    assert m.extra["inference_path"] == PREDICT_PROBA
    assert m.extra["inference_path_reason"].startswith("not verified at registration")


def test_register_bad_verify_windows_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.joblib"
    path.write_bytes(b"x")
    reg = Registry(tmp_path / "reg")
    with pytest.raises(InvalidInput, match="verification windows must have shape"):
        register_user_model(reg, "j", "v1", "sklearn", path, input_shape=SHAPE,
                            class_labels=CLASS_LABELS, verify_windows=np.zeros((3, 9, 50)))
    bad = np.zeros((2, *SHAPE), np.float32)
    bad[0, 0, 0] = np.inf
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        register_user_model(reg, "j", "v1", "sklearn", path, input_shape=SHAPE,
                            class_labels=CLASS_LABELS, verify_windows=bad)


def test_torch_registration_unchanged_without_windows(tmp_path: Path) -> None:
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"weights")
    reg = Registry(tmp_path / "reg")
    kw: dict[str, Any] = {"input_shape": SHAPE, "class_labels": CLASS_LABELS,
                          "torch_class": "pkg.mod:Net"}
    m = register_user_model(reg, "t", "v1", "torch", pt, **kw)
    assert "verify_windows" not in m.extra and "attachments" not in m.extra
    held_out = make_windows(10, seed=1)[0]
    m2 = register_user_model(reg, "t", "v2", "torch", pt, verify_windows=held_out, **kw)
    assert m2.extra["verify_windows"]["rows"] == 10
    reg.verified_attachment(m2, VERIFY_FILE)


# --------------------------------------------------------------------------- attachments


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(b"bytes to hash" * 10)
    return path


def test_attachments_are_hashed_kept_and_checked(tmp_path: Path, artifact: Path) -> None:
    reg = Registry(tmp_path / "reg")
    side = write_windows(tmp_path / "w.npy", probe_windows((4, 3), rows=5))
    m = reg.register("d", "v1", "sklearn", artifact, input_shape=(4, 3), class_labels="abc",
                     attachments={VERIFY_FILE: side})
    version_dir = reg.version_dir("d", "v1")
    assert sorted(p.name for p in version_dir.iterdir()) == [MANIFEST_FILE, "model.joblib",
                                                               VERIFY_FILE]
    assert m.extra["attachments"] == {VERIFY_FILE: sha256_file(side)}
    assert verify_attachment(m, version_dir, VERIFY_FILE) == version_dir / VERIFY_FILE
    (version_dir / VERIFY_FILE).write_bytes(b"swapped")
    with pytest.raises(ArtifactError, match="fails its sha256 check"):
        reg.verified_attachment(m, VERIFY_FILE)
    with pytest.raises(ArtifactError, match="registered no attachment"):
        reg.verified_attachment(m, "other.npy")
    # re-registering without it removes the stale file and its record
    m2 = reg.register("d", "v1", "sklearn", artifact, input_shape=(4, 3), class_labels="abc",
                      overwrite=True)
    assert "attachments" not in m2.extra and not (version_dir / VERIFY_FILE).exists()


@pytest.mark.parametrize("name", ["../x.npy", ".hidden", MANIFEST_FILE, "model.npy", ""])
def test_bad_attachment_names_refused(tmp_path: Path, artifact: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="attachment name"):
        Registry(tmp_path / "reg").register("d", "v1", "sklearn", artifact, input_shape=(4, 3),
                                            class_labels="abc", attachments={name: artifact})


def test_manifest_with_bad_attachments_refused(tmp_path: Path, artifact: Path) -> None:
    data = Registry(tmp_path / "reg").register(
        "d", "v1", "sklearn", artifact, input_shape=(4, 3), class_labels="abc").to_dict()
    for bad in ({"../x": "0" * 64}, {"w.npy": "nothex"}, ["w.npy"]):
        with pytest.raises(ArtifactError, match="attachment"):
            Manifest.from_dict({**data, "extra": {"attachments": bad}})


def test_old_manifest_without_the_new_fields_loads(tmp_path: Path, artifact: Path) -> None:
    """A manifest written before verify windows and inference paths existed."""
    reg = Registry(tmp_path / "reg")
    m = reg.register("d", "v1", "sklearn", artifact, input_shape=(4, 3), class_labels="abc",
                     extra={"output": "probabilities"})
    path = reg.version_dir("d", "v1") / MANIFEST_FILE
    data = json.loads(path.read_text())
    assert data["extra"] == {"output": "probabilities"}
    loaded = reg.manifest("d", "v1")
    assert loaded == m
    windows, source = verification_windows(loaded, reg.version_dir("d", "v1"))
    assert source == "probe"
    np.testing.assert_array_equal(windows, probe_windows((4, 3)))


def test_swapped_verify_windows_fall_back_to_the_probe_set(
    tmp_path: Path, artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(tmp_path / "reg")
    held_out = np.arange(2 * 12, dtype=np.float32).reshape(2, 4, 3)
    m = reg.register("d", "v1", "sklearn", artifact, input_shape=(4, 3), class_labels="abc",
                     extra={"verify_windows": {"file": VERIFY_FILE, "source": "held-out"}},
                     attachments={VERIFY_FILE: write_windows(tmp_path / "w.npy", held_out)})
    version_dir = reg.version_dir("d", "v1")
    windows, source = verification_windows(m, version_dir)
    assert source == "held-out"
    np.testing.assert_array_equal(windows, held_out)
    write_windows(version_dir / VERIFY_FILE, held_out + 1)
    with caplog.at_level(logging.WARNING):
        windows, source = verification_windows(m, version_dir)
    assert source == "probe" and "sha256" in caplog.text
    np.testing.assert_array_equal(windows, probe_windows((4, 3)))


def test_probe_windows_are_deterministic_and_bounded() -> None:
    a, b = probe_windows(SHAPE), probe_windows(SHAPE)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, *SHAPE) and a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    assert len(probe_windows((512, 512, 3))) == 2  # 8 MiB at most, but two rows at least
    assert len(probe_windows((16, 16), rows=1)) == 1
