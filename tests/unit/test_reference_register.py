"""Reference statistics recorded by `abserve register --reference` and by the demo training
(models/reference.py), checksummed beside the artifact; what is said when none is given."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from deployments.backends import load_backend
from models import Registry
from models.reference import REFERENCE_FILE, load_reference
from serve.cli import main
from serve.errors import ArtifactError


def _register(tmp_path: Path, *args: str) -> int:
    return main(["register", "m", "v1", "--registry", str(tmp_path / "reg"), *args])


@pytest.fixture
def tensor_model(tmp_path: Path) -> tuple[Path, np.ndarray, LogisticRegression]:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 4, 3)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1) > 0).astype(int) + (x[:, :, 1].mean(axis=1) > 0.3)
    est = LogisticRegression(max_iter=500).fit(x.reshape(300, -1), y)
    artifact = tmp_path / "m.joblib"
    joblib.dump(est, artifact)
    data = tmp_path / "ref.npy"
    np.save(data, x)
    return artifact, x, est


def test_a_tensor_reference_records_channels_and_the_models_labels(
    tmp_path: Path, tensor_model: tuple[Path, np.ndarray, LogisticRegression],
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifact, x, est = tensor_model
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--input-shape", "4,3", "--labels", "a,b,c",
                     "--reference", str(tmp_path / "ref.npy")) == 0
    out = capsys.readouterr().out
    assert "reference statistics recorded: 3 channels over 300 rows" in out
    reg = Registry(tmp_path / "reg")
    m = reg.manifest("m", "v1")
    assert REFERENCE_FILE in m.extra["attachments"]
    ref = load_reference(reg, m)
    assert ref is not None and ref.names == ["ch0", "ch1", "ch2"]
    assert ref.channels[1].count == 300 * 4
    assert ref.channels[1].mean == pytest.approx(float(x[:, :, 1].mean()), rel=1e-5)
    predicted = est.predict(x.reshape(300, -1))
    assert ref.label_counts == tuple(np.bincount(predicted, minlength=3))
    assert ref.label_names == ("a", "b", "c")


def test_a_tabular_reference_has_a_channel_per_field_and_an_output_histogram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"rooms": rng.integers(1, 6, 400), "area": rng.uniform(20, 150, 400)})
    frame["price"] = 3.0 * frame["area"] + 10.0 * frame["rooms"]
    est = LinearRegression().fit(frame[["rooms", "area"]], frame["price"])
    joblib.dump(est, tmp_path / "h.joblib")
    frame.to_csv(tmp_path / "ref.csv", index=False)
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(tmp_path / "h.joblib"),
                     "--kind", "regression", "--reference", str(tmp_path / "ref.csv"),
                     "--target", "price") == 0
    assert "reference statistics recorded: 2 channels over 400 rows" in capsys.readouterr().out
    reg = Registry(tmp_path / "reg")
    ref = load_reference(reg, reg.manifest("m", "v1"))
    assert ref is not None and ref.names == ["rooms", "area"]
    assert sum(ref.output_counts) == 400 and not ref.label_counts
    assert ref.channels[1].quantiles["p50"] == pytest.approx(frame["area"].median(), rel=1e-9)


def test_without_a_reference_it_says_what_is_missing(
    tmp_path: Path, tensor_model: tuple[Path, np.ndarray, LogisticRegression],
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifact, _, _ = tensor_model
    assert _register(tmp_path, "--framework", "sklearn", "--artifact", str(artifact),
                     "--input-shape", "4,3", "--labels", "a,b,c") == 0
    out = capsys.readouterr().out
    assert "no reference statistics: drift is not computed for this version" in out
    assert "--reference DATA" in out
    reg = Registry(tmp_path / "reg")
    assert load_reference(reg, reg.manifest("m", "v1")) is None


def test_a_wrong_shape_is_refused_and_an_altered_reference_fails_its_check(
    tmp_path: Path, tensor_model: tuple[Path, np.ndarray, LogisticRegression],
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifact, x, _ = tensor_model
    np.save(tmp_path / "bad.npy", x.reshape(300, 12))
    common = ["--framework", "sklearn", "--artifact", str(artifact), "--input-shape", "4,3",
              "--labels", "a,b,c"]
    assert _register(tmp_path, *common, "--reference", str(tmp_path / "bad.npy")) == 2
    assert "must be rows of the model's input, shape (n, 4, 3)" in capsys.readouterr().err
    assert _register(tmp_path, *common, "--reference", str(tmp_path / "ref.npy")) == 0
    reg = Registry(tmp_path / "reg")
    m = reg.manifest("m", "v1")
    path = reg.version_dir("m", "v1") / REFERENCE_FILE
    data = json.loads(path.read_text())
    data["channels"][0]["mean"] = 99.0
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_reference(reg, m)


def test_training_records_the_held_out_reference(tmp_path: Path) -> None:
    from models.sales.train import train_all

    train_all(tmp_path, versions=("v1",), n_train=600, n_test=300, quiet=True)
    reg = Registry(tmp_path)
    m = reg.manifest("sales", "v1")
    ref = load_reference(reg, m)
    assert ref is not None and ref.rows == 300 and ref.source == "held-out"
    assert ref.names == [f["name"] for f in m.input_schema or ()]
    assert sum(ref.output_counts) == 300
    backend = load_backend(m, reg.verified_artifact(m))
    assert backend is not None
