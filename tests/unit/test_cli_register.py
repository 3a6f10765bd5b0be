"""`abserve register` with --kind, --schema / --reference, --threshold and --outputs, on
tiny scikit-learn models: what it registers and serves, and each refusal's message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from deployments.backends import load_backend
from models import Registry
from serve.cli import main


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "city": rng.choice(["oslo", "rome", "lima"], n),
        "rooms": rng.integers(1, 6, n),
        "area": rng.uniform(20.0, 150.0, n).round(1),
    })
    frame["price"] = 3.0 * frame["area"] + 10.0 * frame["rooms"] + (frame["city"] == "oslo") * 50
    return frame


def _schema_or_skip() -> Any:
    from models.schema import infer_schema

    try:
        infer_schema(_frame(3, 0))
    except NotImplementedError:
        pytest.skip("models/schema.py is not implemented yet")
    return infer_schema


def _pipe(final: Any) -> Pipeline:
    prep = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"])],
                             remainder="passthrough")
    return Pipeline([("prep", prep), ("model", final)])


@pytest.fixture
def house(tmp_path: Path) -> tuple[Path, Path, Any]:
    frame = _frame(200, seed=1)
    est = _pipe(LinearRegression()).fit(frame.drop(columns=["price"]), frame["price"])
    artifact = tmp_path / "house.joblib"
    joblib.dump(est, artifact)
    reference = tmp_path / "reference.csv"
    _frame(100, seed=2).to_csv(reference, index=False)
    return artifact, reference, est


def _register(tmp_path: Path, *argv: str) -> int:
    return main(["register", "house", "v1", "--registry", str(tmp_path / "reg"), *argv])


def test_reference_infers_the_schema_and_verifies_on_its_rows(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    infer_schema = _schema_or_skip()
    artifact, reference, est = house
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression", "--reference", str(reference),
                     "--target", "price", "--outputs", "price") == 0
    out = capsys.readouterr().out
    assert "regression: outputs ['price']; 3 schema fields" in out
    reg = Registry(tmp_path / "reg")
    m = reg.manifest("house", "v1")
    assert [f["name"] for f in m.input_schema or ()] == ["city", "rooms", "area"]
    assert m.input_dtype == "float64" and m.extra["verify_windows"]["source"] == "held-out"
    test = _frame(30, seed=3).drop(columns=["price"])
    schema = infer_schema(pd.read_csv(reference).drop(columns=["price"]))
    saved = np.load(reg.verified_attachment(m, "verify.npy"))
    np.testing.assert_array_equal(
        saved, schema.encode(pd.read_csv(reference).drop(columns=["price"]).head(64)
                             .to_dict("records")))
    got = load_backend(m, reg.verified_artifact(m)).predict(schema.encode(test.to_dict("records")))
    np.testing.assert_allclose(got[:, 0], est.predict(test), rtol=1e-6)


def test_a_parquet_reference_is_read_like_a_csv_one(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's form: `--reference data.parquet` (pyarrow reads it)."""
    artifact, reference, est = house
    parquet = tmp_path / "reference.parquet"
    pd.read_csv(reference).to_parquet(parquet)
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression", "--reference", str(parquet),
                     "--target", "price", "--outputs", "price") == 0
    m = Registry(tmp_path / "reg").manifest("house", "v1")
    assert [f["name"] for f in m.input_schema or ()] == ["city", "rooms", "area"]
    assert m.kind == "regression" and m.outputs == ("price",)


def test_schema_file_binary_with_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    infer_schema = _schema_or_skip()
    frame = _frame(200, seed=4)
    X, y = frame.drop(columns=["price"]), np.where(frame["price"] > 300, "dear", "cheap")
    est = _pipe(LogisticRegression(max_iter=500)).fit(X, y)
    artifact = tmp_path / "dear.joblib"
    joblib.dump(est, artifact)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(infer_schema(X).to_json()))
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "binary", "--schema", str(schema_file),
                     "--class-labels", "cheap,dear", "--threshold", "0.7") == 0
    m = Registry(tmp_path / "reg").manifest("house", "v1")
    assert (m.kind, m.threshold, m.class_labels, m.width) == ("binary", 0.7, ("cheap", "dear"), 1)
    assert "binary: class_labels ['cheap', 'dear'], threshold 0.7" in capsys.readouterr().out


def test_schema_and_reference_are_exclusive(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, reference, _ = house
    with pytest.raises(SystemExit) as exc:
        _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                  "--schema", "s.json", "--reference", str(reference))
    assert exc.value.code == 2
    assert "not allowed with argument --schema" in capsys.readouterr().err


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def test_a_dataframe_model_needs_a_schema_or_a_reference(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, _, _ = house
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression") == 2
    err = _error(capsys)
    assert "fitted on a DataFrame" in err and "--schema FILE" in err and "--reference DATA" in err
    assert Registry(tmp_path / "reg").versions("house") == []


def test_cli_refusals_say_which_option(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, reference, _ = house
    common = ["--framework", "sklearn", "--artifact", str(artifact)]
    assert _register(tmp_path, *common, "--kind", "regression", "--target", "price") == 2
    assert "--target names the label column of --reference" in _error(capsys)
    assert _register(tmp_path, *common, "--kind", "regression", "--reference", str(reference),
                     "--input-shape", "3") == 2
    assert "drop --input-shape" in _error(capsys)
    assert _register(tmp_path, *common, "--kind", "binary", "--input-shape", "3") == 2
    assert "needs --class-labels NEGATIVE,POSITIVE" in _error(capsys)
    assert _register(tmp_path, *common, "--kind", "regression", "--reference", str(reference),
                     "--target", "nope") == 2
    assert "--target 'nope' is not a column" in _error(capsys)
    bad = tmp_path / "data.json"
    bad.write_text("{}")
    assert _register(tmp_path, *common, "--kind", "regression", "--reference", str(bad)) == 2
    assert "must be a .parquet or .csv" in _error(capsys)
    assert _register(tmp_path, *common, "--kind", "regression", "--schema", str(bad)) == 2
    assert "must hold a JSON list of fields" in _error(capsys)


def test_tensor_models_keep_input_shape_and_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 3))
    Y = np.stack([X.sum(axis=1), X[:, 0] - X[:, 1]], axis=1)
    artifact = tmp_path / "two.joblib"
    joblib.dump(LinearRegression().fit(X, Y), artifact)
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression", "--input-shape", "3", "--outputs", "sum,diff") == 0
    m = Registry(tmp_path / "reg").manifest("house", "v1")
    assert m.input_shape == (3,) and m.outputs == ("sum", "diff") and m.input_schema is None
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression", "--input-shape", "3", "--outputs", "one",
                     "--overwrite") == 2
    assert "outputs (1 named)" in _error(capsys)
    clf = tmp_path / "clf.joblib"
    joblib.dump(LogisticRegression().fit(X, np.digitize(X[:, 0], [-0.5, 0.5])), clf)
    assert main(["register", "house", "v2", "--registry", str(tmp_path / "reg"), "--framework",
                 "sklearn", "--artifact", str(clf), "--input-shape", "3",
                 "--labels", "lo,mid,hi"]) == 0
    m2 = Registry(tmp_path / "reg").manifest("house", "v2")
    assert (m2.kind, m2.class_labels, m2.extra["output"]) == (
        "multiclass", ("lo", "mid", "hi"), "probabilities")


def test_schema_fields_must_be_the_fitted_columns_in_order(
    tmp_path: Path, house: tuple[Path, Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    infer_schema = _schema_or_skip()
    artifact, reference, _ = house
    fields = infer_schema(pd.read_csv(reference).drop(columns=["price"])).to_json()
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(fields[::-1]))
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--kind", "regression", "--schema", str(schema_file)) == 2
    assert "not the columns Pipeline was fitted on, in that order" in _error(capsys)
