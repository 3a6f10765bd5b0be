"""A user's own models, trained outside abserve, register and serve through the backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployments.backends import load_backend
from models import Registry, register_user_model
from models.activity.data import CHANNELS, CLASS_LABELS, WINDOW, make_windows

pytestmark = pytest.mark.backends
# Tiny fits on a few hundred windows need not converge; only the serving path is tested.
no_convergence_warning = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SHAPE = (WINDOW, CHANNELS)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_windows(240, seed=5)


def _check_rows(out: np.ndarray, n: int) -> None:
    assert out.shape == (n, len(CLASS_LABELS)) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@no_convergence_warning
def test_sklearn_logistic_regression_on_flattened_windows(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    joblib = pytest.importorskip("joblib")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    flat = X.reshape(len(X), -1)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(flat, y)
    path = tmp_path / "lr.joblib"
    joblib.dump(est, path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg, "mine", "lr-1", "scikit-learn", path, input_shape=SHAPE, class_labels=CLASS_LABELS
    )
    assert m.framework == "sklearn" and m.extra["output"] == "probabilities"
    # Not a forest: served by its own predict_proba, and the manifest says why.
    assert m.extra["inference_path"] == "predict_proba"
    assert "Pipeline" not in m.extra["inference_path_reason"]
    assert "LogisticRegression is not a RandomForest" in m.extra["inference_path_reason"]
    backend = load_backend(m, reg.verified_artifact(m))
    assert backend.inference_path == "predict_proba"  # type: ignore[attr-defined]
    out = backend.predict(X[:10])
    _check_rows(out, 10)
    np.testing.assert_allclose(out, est.predict_proba(flat[:10]), atol=1e-5)


@no_convergence_warning
def test_sklearn_string_classes_subset_mapped_to_manifest_order(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    joblib = pytest.importorskip("joblib")
    from sklearn.linear_model import LogisticRegression

    X, y = data
    keep = np.isin(y, [1, 2, 7])  # Walking, Running, Subway only
    names = np.asarray(CLASS_LABELS)[y[keep]]
    flat = X[keep].reshape(int(keep.sum()), -1)
    est = LogisticRegression(max_iter=300).fit(flat / 10.0, names)
    assert list(est.classes_) == ["Running", "Subway", "Walking"]  # sorted, not label order
    path = tmp_path / "subset.pkl"
    joblib.dump(est, path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg, "subset", "v1", "sklearn", path, input_shape=SHAPE, class_labels=CLASS_LABELS
    )
    out = load_backend(m, reg.verified_artifact(m)).predict(X[keep][:8] / 10.0)
    _check_rows(out, 8)
    expected = est.predict_proba(flat[:8] / 10.0)
    np.testing.assert_allclose(out[:, [2, 7, 1]], expected, atol=1e-5)
    assert np.all(out[:, [0, 3, 4, 5, 6]] == 0)


def test_torch_state_dict_with_user_class(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    torch = pytest.importorskip("torch")
    from tests.backends.user_models import TinyNet

    torch.manual_seed(0)
    net = TinyNet(hidden=12).eval()
    path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg,
        "mine",
        "tiny",
        "torch",
        path,
        input_shape=SHAPE,
        class_labels=CLASS_LABELS,
        torch_class="tests.backends.user_models:TinyNet",
        init_kwargs={"hidden": 12},
        output="logits",
    )
    X = data[0][:6]
    out = load_backend(m, reg.verified_artifact(m)).predict(X)
    _check_rows(out, 6)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_torch_wrong_init_kwargs_is_an_artifact_error(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from serve.errors import ArtifactError
    from tests.backends.user_models import TinyNet

    path = tmp_path / "tiny.pt"
    torch.save(TinyNet(hidden=12).state_dict(), path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg,
        "mine",
        "tiny",
        "torch",
        path,
        input_shape=SHAPE,
        class_labels=CLASS_LABELS,
        torch_class="tests.backends.user_models:TinyNet",
        init_kwargs={"hidden": 7},
    )
    with pytest.raises(ArtifactError, match="cannot load torch state_dict"):
        load_backend(m, reg.verified_artifact(m))


def test_keras_file(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(len(CLASS_LABELS), activation="softmax"),
        ]
    )
    path = tmp_path / "small.keras"
    model.save(path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg, "mine", "keras-1", "keras", path, input_shape=SHAPE, class_labels=CLASS_LABELS
    )
    assert m.framework == "tensorflow"
    X = data[0][:6]
    out = load_backend(m, reg.verified_artifact(m)).predict(X)
    _check_rows(out, 6)
    np.testing.assert_allclose(out, np.asarray(model(X, training=False)), atol=1e-5)
