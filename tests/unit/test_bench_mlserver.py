"""benchmarks/mlserver.py: pins, settings, the virtualenv's life cycle, the answer check.

No MLServer runs here (tests/integration/test_bench.py runs it): pip and the
server are replaced by fakes, so these take milliseconds and need no network.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import mlserver


def test_the_virtualenv_pins_our_scikit_learn_and_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = mlserver.pinned_versions()
    assert pins["mlserver"] == pins["mlserver-sklearn"] == "1.7.1"
    assert pins["uvloop"] == "0.21.0"  # SeldonIO/MLServer#2286
    for name in ("scikit-learn", "numpy", "scipy", "joblib"):
        assert pins[name] == metadata.version(name), name
    assert f"scikit-learn=={metadata.version('scikit-learn')}" in mlserver.requirements()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mlserver.default_venv() == (
        tmp_path / "abserve" / f"mlserver-1.7.1-sklearn-{metadata.version('scikit-learn')}")


def test_settings_batch_adaptively_and_infer_in_the_http_process(tmp_path: Path) -> None:
    artifact = tmp_path / "model.joblib"
    root = mlserver.write_settings(tmp_path / "ms", artifact,
                                   {"http": 20001, "grpc": 20002, "metrics": 20003})
    settings = json.loads((root / "settings.json").read_text())
    assert settings["parallel_workers"] == 0 and settings["host"] == "127.0.0.1"
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (
        20001, 20002, 20003)
    model = json.loads((root / "activity" / "model-settings.json").read_text())
    assert model["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert (model["max_batch_size"], model["max_batch_time"]) == (64, 0.005)
    assert model["parameters"] == {"uri": str(artifact)}
    assert mlserver.MLServer(pid=1, port=20001, settings=settings).infer_url == (
        "http://127.0.0.1:20001/v2/models/activity/infer")


class _FakeBuild:
    """Stands in for `python -m venv` and pip; _probe answers the pinned versions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> None:
        self.created = 0
        self.fail = fail
        monkeypatch.setattr(mlserver, "_create", self._create)
        monkeypatch.setattr(mlserver, "_pip_install", self._pip)
        monkeypatch.setattr(mlserver, "_probe", lambda venv, names: mlserver.pinned_versions())

    def _create(self, venv: Path) -> None:
        self.created += 1
        (venv / "bin").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")

    def _pip(self, venv: Path, reqs: list[str], log_path: Path) -> None:
        if self.fail:
            raise mlserver.MLServerUnavailable(self.fail)


def test_a_whole_virtualenv_is_reused_and_a_broken_one_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = _FakeBuild(monkeypatch)
    venv = tmp_path / "ms-venv"
    assert mlserver.ensure_venv(venv) == venv and build.created == 1
    marker = json.loads((venv / mlserver.MARKER).read_text())
    assert marker["versions"] == mlserver.pinned_versions() and "built_s" in marker
    mlserver.ensure_venv(venv)
    assert build.created == 1  # reused
    (venv / "leftover").write_text("x")
    (venv / mlserver.MARKER).unlink()  # a build that stopped half-way
    mlserver.ensure_venv(venv)
    assert build.created == 2 and not (venv / "leftover").exists()
    (venv / mlserver.MARKER).write_text(json.dumps({"versions": {"scikit-learn": "0.1"}}))
    mlserver.ensure_venv(venv)  # built for another scikit-learn
    assert build.created == 3


def test_a_virtualenv_that_cannot_be_built_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _FakeBuild(monkeypatch, fail="pip install exited 1: ERROR: No matching distribution "
                                 "found for mlserver==1.7.1")
    with pytest.raises(mlserver.MLServerUnavailable,
                       match=r"^MLServer virtualenv could not be built: pip install exited 1: "
                             r"ERROR: No matching distribution"):
        mlserver.ensure_venv(tmp_path / "v")

    def no_venv(venv: Path) -> None:
        raise subprocess.CalledProcessError(1, ["python", "-m", "venv"],
                                            stderr=b"Error: ensurepip is not available\n")

    monkeypatch.setattr(mlserver, "_create", no_venv)
    with pytest.raises(mlserver.MLServerUnavailable, match="ensurepip is not available"):
        mlserver.ensure_venv(tmp_path / "w")


def test_a_directory_that_is_no_virtualenv_is_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _FakeBuild(monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(mlserver.MLServerUnavailable, match="is not a virtualenv; refusing"):
        mlserver.ensure_venv(mine)
    assert (mine / "notes.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mlserver.ensure_venv(empty) == empty  # an empty directory is fine to build in


def test_pip_failures_name_the_error_line() -> None:
    log = "Collecting mlserver==1.7.1\nERROR: Could not find a version\nERROR: No matching\n"
    assert mlserver._last_line(log) == "ERROR: No matching"
    assert mlserver._last_line("") == "(no output)"
    server = ("2026-12-01 23:40:56,027 [mlserver][activity] INFO - Couldn't load model\n"
              "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 110\n"
              "2026-12-01 23:40:56,030 [mlserver] ERROR - Some of the models failed to load\n"
              "2026-12-01 23:40:56,431 [mlserver.grpc] INFO - gRPC server shutdown complete\n")
    assert mlserver._last_line(server) == (
        "2026-12-01 23:40:56,030 [mlserver] ERROR - Some of the models failed to load "
        "(KeyError: 110)")


# ---------------------------------------------------------------- the answer check


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pipeline of the bench's v1 shape: window_stats + a random forest."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from models.activity.data import make_windows
    from models.activity.features import window_stats

    X, y = make_windows(80, 0)
    pipe = Pipeline([("stats", FunctionTransformer(window_stats)),
                     ("forest", RandomForestClassifier(n_estimators=4, random_state=0))])
    pipe.fit(X, y)
    path = tmp_path_factory.mktemp("ms") / "model.joblib"
    joblib.dump(pipe, path)
    return path


class _Reply:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self._body = body
        self.text = json.dumps(body)

    def json(self) -> dict[str, Any]:
        return self._body


def _fake_mlserver(artifact: Path, skew: float = 0.0, status: int = 200) -> Any:
    """Decodes an OIP request as MLServer's NumpyCodec does and answers predict_proba."""
    import joblib

    est = joblib.load(artifact)

    def post(url: str, json: dict[str, Any], timeout: float) -> _Reply:
        (tensor,) = json["inputs"]
        assert json["outputs"] == [{"name": "predict_proba"}]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        p = est.predict_proba(x) + skew
        return _Reply(status, {"outputs": [{"name": "predict_proba", "shape": list(p.shape),
                                            "datatype": "FP64", "data": p.ravel().tolist()}]})

    return post


def test_answers_equal_to_the_artifacts_pass(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    monkeypatch.setattr(httpx, "post", _fake_mlserver(artifact))
    check = mlserver.check_answers("http://127.0.0.1:1/v2/models/activity/infer", artifact)
    assert check == {"windows": 8, "max_abs_diff": 0.0, "tolerance": 1e-6, "passed": True}


@pytest.mark.parametrize(("skew", "status", "match"), [
    (1e-3, 200, r"differs from the artifact's by up to 0.001 \(> 1e-06\) on 8 known windows"),
    (0.0, 500, "HTTP 500"),
])
def test_wrong_answers_fail_the_variant(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, skew: float, status: int, match: str
) -> None:
    import httpx

    monkeypatch.setattr(httpx, "post", _fake_mlserver(artifact, skew, status))
    with pytest.raises(mlserver.MLServerMismatch, match=match):
        mlserver.check_answers("http://127.0.0.1:1/v2/models/activity/infer", artifact)
