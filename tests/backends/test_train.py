"""The demo training: three versions, each learns the task, each serves through its backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.backends import load_backend
from models import Registry
from models.activity.data import make_windows
from models.activity.train import MODEL_NAME, train_all
from serve.errors import ArtifactError

pytestmark = pytest.mark.backends


def test_train_all_registers_three_accurate_versions(tmp_path: Path) -> None:
    manifests = train_all(tmp_path, seed=0, n_train=1600, n_test=800, quiet=True)
    assert [(m.version, m.framework) for m in manifests] == [
        ("v1", "sklearn"),
        ("v2", "torch"),
        ("v3", "tensorflow"),
    ]
    registry = Registry(tmp_path)
    assert registry.versions(MODEL_NAME) == ["v1", "v2", "v3"]
    X, y = make_windows(400, seed=777)
    for m in manifests:
        assert m.accuracy is not None and m.accuracy > 0.7, m
        assert m.training_time_s is not None and m.training_time_s > 0
        assert registry.manifest(MODEL_NAME, m.version) == m
        backend = load_backend(m, registry.verified_artifact(m))
        served = float((backend.predict(X).argmax(axis=1) == y).mean())
        assert served > 0.7, (m.version, served)

    with pytest.raises(ArtifactError, match="already exist"):
        train_all(tmp_path, n_train=80, n_test=40, quiet=True, versions=("v1",), overwrite=False)
