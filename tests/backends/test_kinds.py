"""Every framework serves every output kind: real tiny models, registered with
register_user_model (checked through the backend) and served by load_backend, answer what
the framework's own predict answers; artifacts that do not fit their declared kind are
refused at registration, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.backends import load_backend
from models import Registry
from models.register import register_user_model
from serve.errors import InvalidInput

pytestmark = pytest.mark.backends

joblib = pytest.importorskip("joblib")
N_IN = 4
WINDOW_SHAPE = (6, 3)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, N_IN)).astype(np.float32)
    y = X @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.1 * rng.standard_normal(300)
    return X, y


def _dump(est: Any, tmp_path: Path, name: str = "m.joblib") -> Path:
    path = tmp_path / name
    joblib.dump(est, path)
    return path


def _register(reg: Registry, path: Path, framework: str = "sklearn", **kw: Any) -> Any:
    m = register_user_model(reg, "mine", kw.pop("version", "v1"), framework, path,
                            load=load_backend, **kw)
    return m, load_backend(m, reg.verified_artifact(m))


# --------------------------------------------------------------------------- scikit-learn


def test_sklearn_binary_logistic_regression(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = rows
    labels = np.where(y > 0, "yes", "no")
    est = LogisticRegression().fit(X, labels)
    m, backend = _register(reg, _dump(est, tmp_path), input_shape=(N_IN,),
                           class_labels=("no", "yes"), kind="binary", threshold=0.3)
    assert (m.kind, m.width, m.threshold, m.class_labels) == ("binary", 1, 0.3, ("no", "yes"))
    assert m.extra["output"] == "probabilities"
    out = backend.predict(X[:20])
    assert out.shape == (20, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], est.predict_proba(X[:20])[:, 1], atol=1e-6)


def test_sklearn_binary_positive_is_the_second_label(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    """classes_ are sorted ('churn' < 'stay'); the score is class_labels[1]'s, wherever its
    column is."""
    from sklearn.linear_model import LogisticRegression

    X, y = rows
    est = LogisticRegression().fit(X, np.where(y > 0, "churn", "stay"))
    _, backend = _register(reg, _dump(est, tmp_path), input_shape=(N_IN,),
                           class_labels=("stay", "churn"), kind="binary")
    np.testing.assert_allclose(backend.predict(X[:10])[:, 0],
                               est.predict_proba(X[:10])[:, 0], atol=1e-6)


def test_sklearn_ridge_regression(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import Ridge

    X, y = rows
    est = Ridge(alpha=0.5).fit(X, y * 1000.0)
    m, backend = _register(reg, _dump(est, tmp_path), input_shape=(N_IN,), kind="regression")
    assert (m.kind, m.outputs, m.class_labels, m.extra["output"]) == (
        "regression", ("value",), (), "values")
    assert m.extra["inference_path"] == "predict"
    assert "tree loop serves forest classifiers only" in m.extra["inference_path_reason"]
    assert backend.inference_path == "predict"
    out = backend.predict(X[:15])
    assert out.shape == (15, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], est.predict(X[:15]), rtol=1e-6)


def test_sklearn_multi_output_regressor_horizon_3(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.ensemble import RandomForestRegressor

    X, y = rows
    Y = np.stack([y, 2 * y, y - X[:, 0]], axis=1)
    est = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(X, Y)
    path = _dump(est, tmp_path)
    m, backend = _register(reg, path, input_shape=(N_IN,), kind="regression",
                           outputs=("d1", "d2", "d3"))
    assert m.width == 3 and m.extra["inference_path"] == "predict"
    out = backend.predict(X[:12])
    assert out.shape == (12, 3)
    np.testing.assert_allclose(out, est.predict(X[:12]), rtol=1e-6)
    with pytest.raises(InvalidInput, match=r"outputs \(2 named\)") as exc:
        _register(reg, path, version="v2", input_shape=(N_IN,), kind="regression",
                  outputs=("d1", "d2"))
    assert exc.value.field == "outputs"


def _shop_frame(n: int, seed: int) -> Any:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "store": rng.choice(["north", "south", "east"], n),
        "promo": rng.random(n) < 0.3,
        "items": rng.integers(0, 40, n),
        "price": rng.uniform(1.0, 9.0, n).round(2),
    })


def _pipeline(final: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer([
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["store"]),
        ("num", StandardScaler(), ["items", "price"]),
        ("flag", "passthrough", ["promo"]),
    ])
    return Pipeline([("prep", prep), ("model", final)])


def _schema_or_skip(frame: Any) -> Any:
    schema_mod = pytest.importorskip("models.schema")
    try:
        return schema_mod.infer_schema(frame)
    except NotImplementedError:
        pytest.skip("models/schema.py is not implemented yet")


def test_sklearn_column_transformer_on_a_dataframe(tmp_path: Path, reg: Registry) -> None:
    from sklearn.linear_model import Ridge

    frame = _shop_frame(240, seed=1)
    schema = _schema_or_skip(frame)
    target = 3.0 * frame["items"] - 2.0 * frame["price"] + 5.0 * frame["promo"] + (
        frame["store"] == "north") * 10.0
    est = _pipeline(Ridge()).fit(frame, target)
    held_out = _shop_frame(80, seed=2)
    m, backend = _register(reg, _dump(est, tmp_path), kind="regression", outputs=("sales",),
                           input_schema=schema.to_json(), verify_windows=held_out)
    assert m.input_shape == (4,) and m.input_dtype == "float64"
    assert m.input_schema is not None and [f["name"] for f in m.input_schema] == list(frame)
    assert m.extra["verify_windows"] == {"file": "verify.npy", "rows": 64, "source": "held-out"}
    saved = np.load(reg.verified_attachment(m, "verify.npy"))
    assert saved.dtype == np.float64
    np.testing.assert_array_equal(saved, schema.encode(held_out.head(64).to_dict("records")))
    rows = schema.encode(held_out.to_dict("records"))
    out = backend.predict(rows)
    assert out.shape == (80, 1)
    np.testing.assert_allclose(out[:, 0], est.predict(held_out), rtol=1e-6)


def test_sklearn_tabular_forest_classifier_keeps_the_tree_loop(
    tmp_path: Path, reg: Registry
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    frame = _shop_frame(300, seed=3)
    schema = _schema_or_skip(frame)
    y = np.where((frame["items"] > 20) | frame["promo"], "buy", "skip")
    est = _pipeline(RandomForestClassifier(n_estimators=8, random_state=0)).fit(frame, y)
    m, backend = _register(reg, _dump(est, tmp_path), kind="binary",
                           class_labels=("skip", "buy"), input_schema=schema.to_json())
    assert m.extra["verify_windows"]["source"] == "probe"  # schema rows, float64
    assert m.extra["inference_path"] == "forest-tree-loop"
    assert backend.inference_path == "forest-tree-loop"
    test = _shop_frame(50, seed=4)
    out = backend.predict(schema.encode(test.to_dict("records")))
    np.testing.assert_allclose(out[:, 0], est.predict_proba(test)[:, 0], atol=1e-12)


# --------------------------------------------------------------------------- torch


def test_torch_regression_on_schema_rows(tmp_path: Path, reg: Registry) -> None:
    torch = pytest.importorskip("torch")
    from tests.backends.user_models import TabularNet

    frame = _shop_frame(40, seed=5)
    schema = _schema_or_skip(frame)
    torch.manual_seed(0)
    net = TabularNet(n_in=4, n_out=3).eval()
    path = tmp_path / "tab.pt"
    torch.save(net.state_dict(), path)
    m, backend = _register(reg, path, "torch", kind="regression", outputs=("a", "b", "c"),
                           input_schema=schema.to_json(),
                           torch_class="tests.backends.user_models:TabularNet",
                           init_kwargs={"n_in": 4, "n_out": 3})
    assert m.extra["output"] == "values" and m.input_dtype == "float64"
    rows = schema.encode(frame.to_dict("records"))
    out = backend.predict(rows)
    with torch.no_grad():
        expected = net(torch.from_numpy(rows.astype(np.float32))).numpy()
    assert out.shape == (40, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_torch_binary_logit_net(tmp_path: Path, reg: Registry) -> None:
    torch = pytest.importorskip("torch")
    from tests.backends.user_models import ScoreNet

    torch.manual_seed(1)
    net = ScoreNet(window=WINDOW_SHAPE[0], channels=WINDOW_SHAPE[1]).eval()
    path = tmp_path / "score.pt"
    torch.save(net.state_dict(), path)
    m, backend = _register(reg, path, "torch", input_shape=WINDOW_SHAPE, kind="binary",
                           class_labels=("ok", "fault"), output="logits",
                           torch_class="tests.backends.user_models:ScoreNet",
                           init_kwargs={"window": WINDOW_SHAPE[0],
                                        "channels": WINDOW_SHAPE[1]})
    X = np.random.default_rng(2).standard_normal((9, *WINDOW_SHAPE)).astype(np.float32) * 5
    out = backend.predict(X)
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(X))).numpy()
    assert out.shape == (9, 1) and np.all((out >= 0) & (out <= 1))
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-6)
    assert m.kind == "binary"


def test_torch_regression_tensor_net(tmp_path: Path, reg: Registry) -> None:
    torch = pytest.importorskip("torch")
    from tests.backends.user_models import TinyNet

    torch.manual_seed(2)
    kw = {"window": WINDOW_SHAPE[0], "channels": WINDOW_SHAPE[1], "n_classes": 1}
    net = TinyNet(**kw).eval()
    path = tmp_path / "reg.pt"
    torch.save(net.state_dict(), path)
    _, backend = _register(reg, path, "torch", input_shape=WINDOW_SHAPE, kind="regression",
                           torch_class="tests.backends.user_models:TinyNet", init_kwargs=kw)
    X = np.random.default_rng(3).standard_normal((5, *WINDOW_SHAPE)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(backend.predict(X), expected, rtol=1e-6, atol=1e-7)
    assert backend.inference_path == "torchscript-trace"


# --------------------------------------------------------------------------- keras


def _keras_dense(keras: Any, units: int, activation: str | None) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((N_IN,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(units, activation=activation),
    ])


def test_keras_regression_and_binary(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    keras = pytest.importorskip("keras")
    X = rows[0][:10]
    forecast = _keras_dense(keras, 3, None)
    path = tmp_path / "forecast.keras"
    forecast.save(path)
    m, backend = _register(reg, path, "keras", input_shape=(N_IN,), kind="regression",
                           outputs=("t1", "t2", "t3"))
    assert m.width == 3
    # The tf.function graph serves when within 1e-6 of each column's scale of the eager call
    # (3.7e-7 here, on oneDNN); a CPU where it is not falls back to eager and says why.
    served: Any = backend
    assert served.inference_path_max_dp is not None
    assert (served.inference_path == "tf-function") == (served.inference_path_max_dp <= 1e-6)
    np.testing.assert_allclose(backend.predict(X), np.asarray(forecast(X, training=False)),
                               rtol=1e-5, atol=1e-6)

    scorer = _keras_dense(keras, 1, "sigmoid")
    path = tmp_path / "scorer.keras"
    scorer.save(path)
    m, backend = _register(reg, path, "keras", version="v2", input_shape=(N_IN,), kind="binary",
                           class_labels=("neg", "pos"))
    out = backend.predict(X)
    assert out.shape == (10, 1)
    np.testing.assert_allclose(out, np.asarray(scorer(X, training=False)), atol=1e-6)


# --------------------------------------------------------------------------- refusals


def test_regressor_registered_as_multiclass_is_refused(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import Ridge

    est = Ridge().fit(*rows)
    with pytest.raises(InvalidInput, match="Ridge is not a classifier") as exc:
        _register(reg, _dump(est, tmp_path), input_shape=(N_IN,), class_labels=("a", "b", "c"))
    assert "kind regression" in exc.value.message and exc.value.field == "kind"
    assert reg.versions("mine") == []


def test_classifier_registered_as_regression_is_refused(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = rows
    est = LogisticRegression().fit(X, y > 0)
    with pytest.raises(InvalidInput, match="LogisticRegression is a classifier.*not regression"):
        _register(reg, _dump(est, tmp_path), input_shape=(N_IN,), kind="regression")


def test_three_classes_registered_as_binary_is_refused(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = rows
    est = LogisticRegression().fit(X, np.digitize(y, [-1.0, 1.0]))
    with pytest.raises(InvalidInput, match="has 3 classes_.*binary model exactly 2"):
        _register(reg, _dump(est, tmp_path), input_shape=(N_IN,), class_labels=("lo", "hi"),
                  kind="binary")


def test_more_classes_than_labels_is_refused(
    tmp_path: Path, reg: Registry, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = rows
    est = LogisticRegression().fit(X, np.digitize(y, [-2.0, 0.0, 2.0]))
    with pytest.raises(InvalidInput, match="4 classes_, more than the 3 class_labels"):
        _register(reg, _dump(est, tmp_path), input_shape=(N_IN,), class_labels=("a", "b", "c"))


def test_torch_wrong_output_width_is_refused(tmp_path: Path, reg: Registry) -> None:
    torch = pytest.importorskip("torch")
    from tests.backends.user_models import TabularNet

    path = tmp_path / "wide.pt"
    torch.save(TabularNet(n_in=N_IN, n_out=3).state_dict(), path)
    common: dict[str, Any] = {"input_shape": (N_IN,),
                              "torch_class": "tests.backends.user_models:TabularNet",
                              "init_kwargs": {"n_in": N_IN, "n_out": 3}}
    with pytest.raises(InvalidInput, match=r"does not fit kind binary.*\(64, 2\)") as exc:
        _register(reg, path, "torch", kind="binary", class_labels=("n", "y"), output="logits",
                  **common)
    assert exc.value.field == "kind"
    with pytest.raises(InvalidInput, match=r"does not fit kind regression.*outputs \(2 named\)"):
        _register(reg, path, "torch", kind="regression", outputs=("a", "b"), **common)
    with pytest.raises(InvalidInput, match=r"expected \(64, 4\).*class_labels"):
        _register(reg, path, "torch", class_labels=("a", "b", "c", "d"), output="logits",
                  **common)
    assert reg.versions("mine") == []


def test_keras_probabilities_outside_unit_interval_are_refused(
    tmp_path: Path, reg: Registry
) -> None:
    keras = pytest.importorskip("keras")
    raw = _keras_dense(keras, 1, None)  # a logit, declared as a probability
    path = tmp_path / "raw.keras"
    raw.save(path)
    with pytest.raises(InvalidInput, match="outside \\[0, 1\\].*'logits'"):
        _register(reg, path, "keras", input_shape=(N_IN,), kind="binary",
                  class_labels=("neg", "pos"))
    m, _ = _register(reg, path, "keras", input_shape=(N_IN,), kind="binary",
                     class_labels=("neg", "pos"), output="logits")
    assert m.extra["output"] == "logits"
