"""Registry, manifests, user-model registration and the demo data generator: no framework."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import Manifest, Registry, register_user_model
from models.activity.data import CHANNELS, CLASS_LABELS, WINDOW, make_windows, sample_window
from models.registry import MANIFEST_FILE, sha256_file
from serve.errors import ArtifactError, InvalidInput

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("a", "b", "c")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(b"not really a model, only bytes to hash" * 100)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def _register(registry: Registry, artifact: Path, version: str = "v1", **kw: object) -> Manifest:
    return registry.register(
        "demo",
        version,
        "sklearn",
        artifact,
        input_shape=(4, 3),
        class_labels=LABELS,
        **kw,  # type: ignore[arg-type]
    )


def test_manifest_round_trip(registry: Registry, artifact: Path) -> None:
    m = _register(registry, artifact, accuracy=0.9, training_time_s=1.5, extra={"k": [1, 2]})
    data = json.loads(json.dumps(m.to_dict()))
    assert Manifest.from_dict(data) == m
    assert isinstance(Manifest.from_dict(data).input_shape, tuple)


def test_manifest_refuses_unknown_and_missing_keys(registry: Registry, artifact: Path) -> None:
    data = _register(registry, artifact).to_dict()
    with pytest.raises(ArtifactError, match="unknown keys \\['surprise'\\]"):
        Manifest.from_dict({**data, "surprise": 1})
    del data["sha256"]
    with pytest.raises(ArtifactError, match="missing keys \\['sha256'\\]"):
        Manifest.from_dict(data)


def test_manifest_refuses_artifact_paths(registry: Registry, artifact: Path) -> None:
    data = _register(registry, artifact).to_dict()
    with pytest.raises(ArtifactError, match="plain file name"):
        Manifest.from_dict({**data, "artifact": "../../etc/passwd"})


def test_register_and_read_back(registry: Registry, artifact: Path) -> None:
    m = _register(registry, artifact, accuracy=0.5, description="first")
    assert registry.models() == ["demo"]
    assert registry.versions("demo") == ["v1"]
    assert registry.manifest("demo", "v1") == m
    assert m.sha256 == sha256_file(artifact)
    assert m.created_at.endswith("Z")
    path = registry.verified_artifact(m)
    assert path.read_bytes() == artifact.read_bytes()
    assert path.parent == registry.root / "demo" / "v1"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_versions_sort_naturally(registry: Registry, artifact: Path) -> None:
    for v in ("v10", "v2", "v1"):
        _register(registry, artifact, v)
    assert registry.versions("demo") == ["v1", "v2", "v10"]
    assert registry.versions("absent") == []


def test_unregistered_version_is_named(registry: Registry) -> None:
    with pytest.raises(ArtifactError, match="model demo version v9 is not registered under"):
        registry.manifest("demo", "v9")


def test_tampered_artifact_refused(registry: Registry, artifact: Path) -> None:
    m = _register(registry, artifact)
    path = registry.artifact_path(m)
    path.write_bytes(path.read_bytes() + b"!")
    with pytest.raises(ArtifactError, match="sha256") as info:
        registry.verified_artifact(m)
    assert m.sha256 in info.value.message
    assert sha256_file(path) in info.value.message
    assert str(path) in info.value.message
    assert "re-register" in info.value.message


def test_missing_artifact_refused(registry: Registry, artifact: Path) -> None:
    m = _register(registry, artifact)
    registry.artifact_path(m).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        registry.verified_artifact(m)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-v1", "v 1", "x" * 65, "v1\n"])
def test_bad_names_and_versions_refused(registry: Registry, artifact: Path, bad: str) -> None:
    with pytest.raises(InvalidInput):
        _register(registry, artifact, bad)
    with pytest.raises(InvalidInput):
        registry.register(bad, "v1", "sklearn", artifact, input_shape=(1,), class_labels=LABELS)
    with pytest.raises(InvalidInput):
        registry.manifest("demo", bad)


def test_unknown_framework_refused(registry: Registry, artifact: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown framework"):
        registry.register("demo", "v1", "jax", artifact, input_shape=(1,), class_labels=LABELS)


def test_duplicate_version_needs_overwrite(registry: Registry, artifact: Path) -> None:
    first = _register(registry, artifact)
    with pytest.raises(ArtifactError, match="already registered"):
        _register(registry, artifact)
    artifact.write_bytes(b"new bytes")
    second = _register(registry, artifact, overwrite=True)
    assert second.sha256 != first.sha256
    assert registry.manifest("demo", "v1") == second
    registry.verified_artifact(second)


def test_manifest_written_atomically_as_json(registry: Registry, artifact: Path) -> None:
    m = _register(registry, artifact)
    raw = (registry.root / "demo" / "v1" / MANIFEST_FILE).read_text()
    assert json.loads(raw)["sha256"] == m.sha256


def test_register_user_model_validates_arguments(registry: Registry, tmp_path: Path) -> None:
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"weights")
    common = {"input_shape": (50, 9), "class_labels": CLASS_LABELS}
    with pytest.raises(InvalidInput, match="torch_class"):
        register_user_model(registry, "u", "v1", "torch", pt, **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="torch_class"):
        register_user_model(
            registry,
            "u",
            "v1",
            "torch",
            pt,
            torch_class="not a class",
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidInput, match="must end in"):
        register_user_model(registry, "u", "v1", "keras", pt, **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="unknown framework"):
        register_user_model(registry, "u", "v1", "onnx", pt, **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="output"):
        register_user_model(
            registry,
            "u",
            "v1",
            "torch",
            pt,
            torch_class="a.b:C",
            output="scores",
            **common,  # type: ignore[arg-type]
        )
    fake_keras = tmp_path / "m.keras"
    fake_keras.write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="not a Keras v3"):
        register_user_model(registry, "u", "v1", "keras", fake_keras, **common)  # type: ignore[arg-type]
    m = register_user_model(
        registry,
        "u",
        "v1",
        "pytorch",
        pt,
        torch_class="pkg.mod:Net",
        init_kwargs={"width": 4},
        output="logits",
        **common,  # type: ignore[arg-type]
    )
    assert m.framework == "torch"
    assert m.extra == {
        "module_class": "pkg.mod:Net",
        "init_kwargs": {"width": 4},
        "output": "logits",
    }
    assert m.artifact == "model.pt"


def test_generator_shapes_and_determinism() -> None:
    X, y = make_windows(64, seed=3)
    assert X.shape == (64, WINDOW, CHANNELS) and X.dtype == np.float32
    assert y.shape == (64,) and y.dtype == np.int64
    assert np.isfinite(X).all()
    assert np.bincount(y, minlength=len(CLASS_LABELS)).tolist() == [8] * 8  # balanced
    X2, y2 = make_windows(64, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make_windows(64, seed=4)
    assert not np.array_equal(X, X3)


def test_generator_classes_differ() -> None:
    X, y = make_windows(800, seed=0)
    acc_std = X[:, :, 0:3].std(axis=1).mean(axis=1)
    still, running = CLASS_LABELS.index("Still"), CLASS_LABELS.index("Running")
    assert acc_std[y == running].mean() > 10 * acc_std[y == still].mean()


def test_sample_window_is_json_ready() -> None:
    w = sample_window(seed=1)
    assert len(w) == WINDOW and all(len(r) == CHANNELS for r in w)
    assert json.loads(json.dumps(w)) == w
    assert sample_window(seed=1) == w
