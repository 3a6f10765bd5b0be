"""The sales demo family: a deterministic generator, two regression versions that learn it,
and encodings that agree (the generator's, the schema's, the torch net's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import Registry
from models.kinds import REGRESSION
from models.registry import Manifest
from models.sales.data import (
    DEFAULT_DISTANCE_KM,
    FEATURES,
    INPUT_SCHEMA,
    STORES,
    TARGET,
    encode_frame,
    frame,
    make_sales,
    records,
    train_test,
)
from models.sales.train import MODEL_NAME, regression_metrics, train_all
from models.verify import VERIFY_FILE, VERIFY_ROWS

pytestmark = pytest.mark.backends


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, list[Manifest]]:
    root = tmp_path_factory.mktemp("sales-registry")
    return Registry(root), train_all(root, seed=0, quiet=True)


def _schema() -> Any:
    """The models/schema.py Schema of the sales fields, or a skip while it is unimplemented."""
    from models.schema import Schema

    try:
        return Schema.parse(INPUT_SCHEMA)
    except NotImplementedError:
        pytest.skip("models/schema.py is not implemented yet")


def test_generator_is_deterministic_and_realistic() -> None:
    a, b = make_sales(3000, seed=3), make_sales(3000, seed=3)
    assert a.keys() == b.keys() == {*FEATURES, TARGET}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(make_sales(3000, seed=4)[TARGET], a[TARGET])
    assert records(50, seed=3) == records(50, seed=3)
    df1, y1 = frame(200, seed=3)
    df2, y2 = frame(200, seed=3)
    assert list(df1.columns) == list(FEATURES)
    assert df1.equals(df2) and np.array_equal(y1, y2)

    # The structure a model can learn: stores differ, weekends and promos sell more.
    y = a[TARGET]
    assert y.min() >= 0 and 100 < y.mean() < 300
    weekend = np.isin(a["day_of_week"], (4, 5))
    assert y[weekend].mean() > 1.2 * y[~weekend].mean()
    assert y[a["promo"]].mean() > 1.4 * y[~a["promo"]].mean()
    by_store = [y[a["store"] == k].mean() for k in range(len(STORES))]
    assert max(by_store) > 2.5 * min(by_store)
    assert 0.01 < a["holiday"].mean() < 0.06
    assert set(np.unique(a["month"])) == set(range(1, 13))
    assert set(np.unique(a["day_of_week"])) == set(range(7))


def test_records_frame_and_matrix_agree() -> None:
    recs = records(40, seed=9, with_target=True)
    df, y = frame(40, seed=9)
    assert [r[TARGET] for r in recs] == y.tolist()
    for rec, row in zip(recs, df.to_dict("records"), strict=True):
        assert {k: rec[k] for k in FEATURES} == row
    assert all(type(r["holiday"]) is bool and type(r["day_of_week"]) is int for r in recs)
    m = encode_frame(df)
    assert m.dtype == np.float64 and m.shape == (40, len(INPUT_SCHEMA))
    np.testing.assert_array_equal(m[:, 0], [STORES.index(s) for s in df["store"]])
    np.testing.assert_array_equal(m[:, 5], df["price"].to_numpy())
    optional = [f for f in INPUT_SCHEMA if not f["required"]]
    assert [(f["name"], f["default"]) for f in optional] == [
        ("competitor_distance_km", DEFAULT_DISTANCE_KM)
    ]


def test_both_versions_train_and_register(trained: tuple[Registry, list[Manifest]]) -> None:
    registry, manifests = trained
    assert [(m.version, m.framework) for m in manifests] == [("v1", "sklearn"), ("v2", "torch")]
    assert registry.versions(MODEL_NAME) == ["v1", "v2"]
    (_, _), (held_out, _) = train_test(seed=0)
    for m in manifests:
        assert registry.manifest(MODEL_NAME, m.version) == m
        assert m.kind == REGRESSION and m.outputs == (TARGET,) and m.width == 1
        assert m.class_labels == () and m.accuracy is None
        assert m.input_shape == (len(INPUT_SCHEMA),) and m.input_dtype == "float64"
        assert m.input_schema is not None and [dict(f) for f in m.input_schema] == INPUT_SCHEMA
        assert m.training_time_s is not None and 0 < m.training_time_s < 60
        metrics = m.extra["metrics"]
        # The generator's noise floor is R^2 ~0.95 (MAE ~16 units on a mean of ~185).
        assert metrics["r2"] > 0.9, (m.version, metrics)
        assert metrics["mae"] < 22 and metrics["rmse"] < 30, (m.version, metrics)
        verify = np.load(registry.verified_attachment(m, VERIFY_FILE), allow_pickle=False)
        assert verify.dtype == np.float64
        np.testing.assert_array_equal(verify, encode_frame(held_out.iloc[:VERIFY_ROWS]))
    assert manifests[1].extra["module_class"] == "models.sales.nets:SalesNet"


def test_v1_pipeline_predicts_fresh_records(trained: tuple[Registry, list[Manifest]]) -> None:
    import joblib

    registry, manifests = trained
    pipe = joblib.load(registry.verified_artifact(manifests[0]))
    df, y = frame(1500, seed=424_242)
    pred = pipe.predict(df)
    assert pred.shape == (1500,)
    assert regression_metrics(y, pred)["r2"] > 0.9


def _numpy_forward(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """SalesNet written out again in numpy from its state_dict: features, MLP, exp."""
    n_stores = len(state["store_ids"])
    z = np.concatenate(
        [
            np.eye(n_stores)[x[:, 0].astype(int)],
            np.eye(7)[x[:, 1].astype(int)],
            np.eye(12)[x[:, 2].astype(int) - 1],
            (np.stack([x[:, 3], x[:, 4], np.log(x[:, 5]), np.log1p(x[:, 6])], axis=1)
             - state["num_mean"]) / state["num_std"],
        ],
        axis=1,
    )
    h = np.maximum(z @ state["mlp.0.weight"].T + state["mlp.0.bias"], 0.0)
    h = np.maximum(h @ state["mlp.2.weight"].T + state["mlp.2.bias"], 0.0)
    return np.exp(h @ state["mlp.4.weight"].T + state["mlp.4.bias"] + state["log_level"])


def test_torch_net_equals_an_independent_forward(
    trained: tuple[Registry, list[Manifest]],
) -> None:
    import torch

    from models.sales.nets import SalesNet

    registry, manifests = trained
    m = manifests[1]
    model = SalesNet(**m.extra["init_kwargs"])
    state = torch.load(registry.verified_artifact(m), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    df, y = frame(800, seed=31)
    x = encode_frame(df)
    with torch.inference_mode():
        got = model(torch.from_numpy(x)).numpy()
        got32 = model(torch.from_numpy(x.astype(np.float32))).numpy()
    assert got.shape == (800, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got, got32)  # float64 rows are cast to float32 inside
    want = _numpy_forward({k: v.double().numpy() for k, v in state.items()}, x)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert regression_metrics(y, got[:, 0])["r2"] > 0.9

    # The backend's traced fast path needs torch.export to accept a dynamic batch.
    from torch.export import Dim, export

    example = torch.from_numpy(x[:2].astype(np.float32))
    export(model, (example,), strict=False, dynamic_shapes=({0: Dim("batch", min=1)},))
    traced = torch.jit.trace(model, example, check_trace=False)
    with torch.inference_mode():
        np.testing.assert_array_equal(traced(torch.from_numpy(x)).numpy(), got)


def test_schema_encoding_equals_the_generators(trained: tuple[Registry, list[Manifest]]) -> None:
    import joblib

    schema = _schema()
    registry, manifests = trained
    recs = records(300, seed=57)
    df, _ = frame(300, seed=57)
    matrix = schema.encode(recs)
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, encode_frame(df))
    # A missing optional field takes its default.
    trimmed = [{k: v for k, v in r.items() if k != "competitor_distance_km"} for r in recs[:3]]
    np.testing.assert_array_equal(schema.encode(trimmed)[:, 6], [DEFAULT_DISTANCE_KM] * 3)

    pipe = joblib.load(registry.verified_artifact(manifests[0]))
    rebuilt = schema.to_frame(matrix)
    assert list(rebuilt.columns) == list(FEATURES)
    np.testing.assert_array_equal(pipe.predict(rebuilt), pipe.predict(df))


def test_both_versions_serve_through_their_backends(
    trained: tuple[Registry, list[Manifest]],
) -> None:
    import joblib

    from deployments.backends import load_backend

    registry, manifests = trained
    df, y = frame(400, seed=77)
    x = encode_frame(df)
    direct = joblib.load(registry.verified_artifact(manifests[0])).predict(df)
    for m in manifests:
        backend = load_backend(m, registry.verified_artifact(m))
        served = backend.predict(x)
        assert served.shape == (400, 1), m.version
        assert regression_metrics(y, served[:, 0])["r2"] > 0.9, m.version
        if m.framework == "sklearn":
            np.testing.assert_allclose(served[:, 0], direct, rtol=1e-6)
        else:
            path = getattr(backend, "inference_path", None)
            assert path == "torchscript-trace", getattr(backend, "inference_path_reason", "")


def test_retraining_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    from serve.errors import ArtifactError

    train_all(tmp_path, n_train=300, n_test=100, quiet=True, versions=("v1",))
    with pytest.raises(ArtifactError, match="already exist"):
        train_all(tmp_path, n_train=300, n_test=100, quiet=True, versions=("v1",),
                  overwrite=False)
    with pytest.raises(ValueError, match="unknown demo versions"):
        train_all(tmp_path, quiet=True, versions=("v3",))
