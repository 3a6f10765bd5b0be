"""One contract, every framework: each backend loads a registered artifact, answers a
batch with one probability row per instance, refuses bad input and tampered files."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from deployments.backends import Backend, check_batch, load_backend
from deployments.backends.base import _MODULES
from models import Manifest, Registry, register_user_model
from models.activity.data import CHANNELS, CLASS_LABELS, WINDOW, make_windows
from models.activity.train import train_all
from serve.errors import ArtifactError, ConfigError, InvalidInput

pytestmark = pytest.mark.backends

FRAMEWORKS = ("sklearn", "torch", "tensorflow")
N_CLASSES = len(CLASS_LABELS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The three demo versions, trained on a few hundred windows: small and quick."""
    root = tmp_path_factory.mktemp("registry")
    train_all(root, seed=1, n_train=400, n_test=200, quiet=True)
    return Registry(root)


@pytest.fixture(scope="module")
def manifests(registry: Registry) -> dict[str, Manifest]:
    found = [registry.manifest("activity", v) for v in registry.versions("activity")]
    return {m.framework: m for m in found}


@pytest.fixture(scope="module")
def backends(registry: Registry, manifests: dict[str, Manifest]) -> dict[str, Backend]:
    return {fw: load_backend(m, registry.verified_artifact(m)) for fw, m in manifests.items()}


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return make_windows(16, seed=99)[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
class TestContract:
    def test_loads(self, framework: str, backends: dict[str, Backend]) -> None:
        assert isinstance(backends[framework], Backend)

    @pytest.mark.parametrize("n", [1, 5, 16])
    def test_one_probability_row_per_input(
        self, framework: str, backends: dict[str, Backend], windows: np.ndarray, n: int
    ) -> None:
        out = backends[framework].predict(windows[:n])
        assert out.shape == (n, N_CLASSES)
        assert out.dtype == np.float32
        assert np.all(out >= 0)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)

    def test_accepts_nested_lists(
        self, framework: str, backends: dict[str, Backend], windows: np.ndarray
    ) -> None:
        out = backends[framework].predict(windows[:2].tolist())  # type: ignore[arg-type]
        np.testing.assert_allclose(out, backends[framework].predict(windows[:2]), atol=1e-5)

    def test_deterministic(
        self, framework: str, backends: dict[str, Backend], windows: np.ndarray
    ) -> None:
        first = backends[framework].predict(windows)
        np.testing.assert_array_equal(first, backends[framework].predict(windows))

    def test_batch_rows_are_independent(
        self, framework: str, backends: dict[str, Backend], windows: np.ndarray
    ) -> None:
        batched = backends[framework].predict(windows[:4])
        single = np.concatenate([backends[framework].predict(windows[i : i + 1]) for i in range(4)])
        np.testing.assert_allclose(batched, single, atol=1e-4)

    @pytest.mark.parametrize(
        ("shape", "message"),
        [
            ((3, WINDOW, CHANNELS - 1), r"expected shape \(n, 50, 9\), got \(3, 50, 8\)"),
            ((WINDOW, CHANNELS), r"expected shape \(n, 50, 9\), got \(50, 9\)"),
            ((2, 1, WINDOW, CHANNELS), r"got \(2, 1, 50, 9\)"),
            ((0, WINDOW, CHANNELS), "empty batch"),
        ],
    )
    def test_rejects_bad_shapes(
        self, framework: str, backends: dict[str, Backend], shape: tuple[int, ...], message: str
    ) -> None:
        with pytest.raises(InvalidInput, match=message):
            backends[framework].predict(np.zeros(shape, dtype=np.float32))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_rejects_non_finite(
        self, framework: str, backends: dict[str, Backend], windows: np.ndarray, bad: float
    ) -> None:
        batch = windows[:3].copy()
        batch[1, 7, 2] = bad
        with pytest.raises(InvalidInput, match="NaN or infinite values \\(1 of 3"):
            backends[framework].predict(batch)

    def test_rejects_non_numeric(self, framework: str, backends: dict[str, Backend]) -> None:
        with pytest.raises(InvalidInput, match="numeric array"):
            backends[framework].predict([[["a"] * CHANNELS] * WINDOW])  # type: ignore[arg-type]

    def test_tampered_artifact_refused_before_loading(
        self,
        framework: str,
        registry: Registry,
        manifests: dict[str, Manifest],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        manifest = manifests[framework]
        copy = tmp_path / manifest.artifact
        shutil.copyfile(registry.verified_artifact(manifest), copy)
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))

        module_name, _, cls_name = _MODULES[framework].partition(":")
        cls = getattr(importlib.import_module(module_name), cls_name)

        def must_not_deserialize(*args: object, **kwargs: object) -> None:
            raise AssertionError("a tampered artifact reached the deserializer")

        monkeypatch.setattr(cls, "_load", must_not_deserialize)
        with pytest.raises(ArtifactError, match="sha256") as info:
            load_backend(manifest, copy)
        assert manifest.sha256 in info.value.message

    def test_missing_artifact_refused(
        self, framework: str, manifests: dict[str, Manifest], tmp_path: Path
    ) -> None:
        with pytest.raises(ArtifactError, match="missing"):
            load_backend(manifests[framework], tmp_path / "absent")


def test_check_batch_returns_contiguous_float32(manifests: dict[str, Manifest]) -> None:
    batch = np.asfortranarray(np.ones((2, WINDOW, CHANNELS), dtype=np.float64))
    out = check_batch(batch, manifests["torch"])
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]


def test_unknown_framework_refused(manifests: dict[str, Manifest], registry: Registry) -> None:
    m = manifests["sklearn"]
    odd = dataclasses.replace(m, framework="jax")
    with pytest.raises(ArtifactError, match="unknown framework 'jax'"):
        load_backend(odd, registry.verified_artifact(m))


def test_bad_precision_is_a_config_error(
    manifests: dict[str, Manifest], registry: Registry
) -> None:
    m = manifests["torch"]
    with pytest.raises(ConfigError, match="precision"):
        load_backend(m, registry.verified_artifact(m), precision="int4")


def test_torch_fp16_on_cpu_falls_back_with_warning(
    manifests: dict[str, Manifest],
    registry: Registry,
    windows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = manifests["torch"]
    with caplog.at_level(logging.WARNING):
        backend = load_backend(m, registry.verified_artifact(m), precision="fp16")
    assert "fp16" in caplog.text
    assert backend.precision == "fp32"  # type: ignore[attr-defined]
    assert backend.predict(windows).shape == (len(windows), N_CLASSES)


def test_torch_bf16_on_cpu_close_to_fp32(
    manifests: dict[str, Manifest],
    registry: Registry,
    backends: dict[str, Backend],
    windows: np.ndarray,
) -> None:
    m = manifests["torch"]
    bf16 = load_backend(m, registry.verified_artifact(m), precision="bf16")
    many = make_windows(200, seed=5)[0]
    _close_to_fp32(bf16.predict(many), backends["torch"].predict(many))


# Stated tolerance of the reduced-precision paths against fp32 on the same inputs:
# bf16 keeps 8 bits of mantissa, so probabilities move by up to a few hundredths;
# the predicted labels must agree on at least 95 % of the windows.
PRECISION_ATOL = 0.1
LABEL_AGREEMENT = 0.95


# fp32 on a GPU against fp32 on the CPU: the same arithmetic in another order, except that
# cuDNN convolutions (torch's default) and TensorFlow's matmuls may run in TF32 on Ampere
# and later (10-bit mantissa, relative error about 2**-11 = 5e-4 per operation, a few
# layers deep): probabilities within 1e-2, labels agreeing on 99 % of the windows. Not
# the reduced-precision allowance above.
GPU_FP32_ATOL = 1e-2
GPU_FP32_LABEL_AGREEMENT = 0.99


def _close_to_fp32(out: np.ndarray, ref: np.ndarray, precision: str = "bf16") -> None:
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert out.dtype == np.float32
    atol, agreement = ((GPU_FP32_ATOL, GPU_FP32_LABEL_AGREEMENT) if precision == "fp32"
                       else (PRECISION_ATOL, LABEL_AGREEMENT))
    assert np.abs(out - ref).max() < atol, np.abs(out - ref).max()
    assert (out.argmax(axis=1) == ref.argmax(axis=1)).mean() >= agreement


def test_keras_bf16_on_cpu_runs_mixed_precision_close_to_fp32(
    manifests: dict[str, Manifest],
    registry: Registry,
    backends: dict[str, Backend],
) -> None:
    m = manifests["tensorflow"]
    bf16 = load_backend(m, registry.verified_artifact(m), precision="bf16")
    assert bf16.precision == "bf16"  # type: ignore[attr-defined]
    layers = bf16._model.layers  # type: ignore[attr-defined]
    # By layer class: a rebuilt model's layer names get a suffix (conv1d_1) when another
    # model was built earlier in the same process, which depends on the tests' order.
    mixed = [layer for layer in layers if layer.dtype_policy.name == "mixed_bfloat16"]
    kinds = {type(layer).__name__ for layer in mixed}
    assert {"Conv1D", "GRU"} <= kinds  # where the arithmetic is
    assert layers[-1] not in mixed  # the softmax stays float32
    assert "Normalization" not in kinds
    many = make_windows(200, seed=5)[0]
    _close_to_fp32(bf16.predict(many), backends["tensorflow"].predict(many))


def test_keras_fp16_on_cpu_falls_back_with_warning(
    manifests: dict[str, Manifest],
    registry: Registry,
    backends: dict[str, Backend],
    windows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = manifests["tensorflow"]
    with caplog.at_level(logging.WARNING):
        backend = load_backend(m, registry.verified_artifact(m), precision="fp16")
    assert "fp16" in caplog.text
    assert backend.precision == "fp32"  # type: ignore[attr-defined]
    np.testing.assert_array_equal(backend.predict(windows), backends["tensorflow"].predict(windows))


# --------------------------------------------------------------------------- compiled paths


def _eager_probabilities(backend: Backend, X: np.ndarray) -> np.ndarray:
    """What the plain framework call would serve for ``X``."""
    from deployments.backends.base import to_probabilities

    manifest = backend.manifest  # type: ignore[attr-defined]
    raw = backend._eager(X)  # type: ignore[attr-defined]
    return to_probabilities(raw, len(X), manifest.n_classes, backend.output_kind(manifest))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("framework", "path"), [("torch", "torchscript-trace"),
                                                 ("tensorflow", "tf-function")])
def test_cpu_fp32_serves_the_verified_compiled_path(
    framework: str, path: str, backends: dict[str, Backend]
) -> None:
    backend = backends[framework]
    assert backend.inference_path == path  # type: ignore[attr-defined]
    assert backend.inference_path_max_dp <= 1e-6  # type: ignore[attr-defined]
    many = make_windows(64, seed=77)[0]
    for n in (1, 2, 14, 64):
        served = backend.predict(many[:n])
        np.testing.assert_allclose(served, _eager_probabilities(backend, many[:n]),
                                   atol=1e-6, rtol=0)


def test_reduced_precision_keeps_a_verified_path(
    manifests: dict[str, Manifest], registry: Registry
) -> None:
    torch_bf16 = load_backend(manifests["torch"], registry.verified_artifact(manifests["torch"]),
                              precision="bf16")
    assert torch_bf16.inference_path == "torch-eager"  # type: ignore[attr-defined]
    assert "cpu/bf16" in torch_bf16.inference_path_reason  # type: ignore[attr-defined]
    m = manifests["tensorflow"]
    keras_bf16 = load_backend(m, registry.verified_artifact(m), precision="bf16")
    if keras_bf16.inference_path == "tf-function":  # type: ignore[attr-defined]
        assert keras_bf16.inference_path_max_dp <= 1e-6  # type: ignore[attr-defined]
    else:
        assert keras_bf16.inference_path == "keras-eager"  # type: ignore[attr-defined]
        assert "differs" in keras_bf16.inference_path_reason  # type: ignore[attr-defined]


def _register_torch(tmp_path: Path, cls: str) -> tuple[Registry, Manifest]:
    torch = pytest.importorskip("torch")
    from tests.backends import user_models

    torch.manual_seed(0)
    net = getattr(user_models, cls)(hidden=12)
    path = tmp_path / f"{cls}.pt"
    torch.save(net.state_dict(), path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(reg, "mine", "v1", "torch", path, input_shape=(WINDOW, CHANNELS),
                            class_labels=CLASS_LABELS,
                            torch_class=f"tests.backends.user_models:{cls}",
                            init_kwargs={"hidden": 12}, output="logits",
                            verify_windows=make_windows(20, seed=3)[0])
    return reg, m


def test_torch_value_dependent_control_flow_is_not_traced(tmp_path: Path) -> None:
    reg, m = _register_torch(tmp_path, "BranchyNet")
    backend = load_backend(m, reg.verified_artifact(m))
    assert backend.inference_path == "torch-eager"  # type: ignore[attr-defined]
    assert "torch.export refuses" in backend.inference_path_reason  # type: ignore[attr-defined]
    X = make_windows(4, seed=1)[0]
    for batch in (X - 100.0, X + 100.0):  # both branches, served by the module itself
        np.testing.assert_array_equal(backend.predict(batch), _eager_probabilities(backend, batch))


def test_torch_trace_that_differs_from_eager_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg, m = _register_torch(tmp_path, "StatefulNet")
    with caplog.at_level(logging.WARNING):
        backend = load_backend(m, reg.verified_artifact(m))
    assert backend.inference_path == "torch-eager"  # type: ignore[attr-defined]
    assert backend.inference_path_max_dp > 1e-6  # type: ignore[attr-defined]
    assert "differs from torch-eager" in caplog.text


def test_cuda_request_without_gpu_falls_back_to_cpu(
    manifests: dict[str, Manifest], registry: Registry, windows: np.ndarray
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the fallback does not apply")
    m = manifests["torch"]
    backend = load_backend(m, registry.verified_artifact(m), device="cuda")
    assert backend.device == "cpu"  # type: ignore[attr-defined]
    assert backend.predict(windows[:2]).shape == (2, N_CLASSES)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_on_gpu(
    manifests: dict[str, Manifest],
    registry: Registry,
    windows: np.ndarray,
    backends: dict[str, Backend],
    precision: str,
) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    m = manifests["torch"]
    gpu = load_backend(m, registry.verified_artifact(m), device="cuda", precision=precision)
    assert gpu.device == "cuda" and gpu.precision == precision  # type: ignore[attr-defined]
    many = make_windows(200, seed=5)[0]
    _close_to_fp32(gpu.predict(many), backends["torch"].predict(many), precision)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_keras_on_gpu(
    manifests: dict[str, Manifest],
    registry: Registry,
    backends: dict[str, Backend],
    precision: str,
) -> None:
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("needs a GPU visible to TensorFlow")
    m = manifests["tensorflow"]
    gpu = load_backend(m, registry.verified_artifact(m), device="cuda", precision=precision)
    assert gpu.device == "cuda" and gpu.precision == precision  # type: ignore[attr-defined]
    many = make_windows(200, seed=5)[0]
    _close_to_fp32(gpu.predict(many), backends["tensorflow"].predict(many), precision)


def test_keras_refuses_other_file_formats(tmp_path: Path, manifests: dict[str, Manifest]) -> None:
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"legacy")
    reg = Registry(tmp_path / "reg")
    m = reg.register(
        "legacy",
        "v1",
        "tensorflow",
        h5,
        input_shape=(WINDOW, CHANNELS),
        class_labels=CLASS_LABELS,
    )
    with pytest.raises(ArtifactError, match=r"only Keras v3 \.keras files"):
        load_backend(m, reg.verified_artifact(m))


def test_keras_lambda_layers_refused_by_safe_mode(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((WINDOW, CHANNELS)),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Flatten(),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)
    reg = Registry(tmp_path / "reg")
    m = register_user_model(
        reg, "evil", "v1", "keras", path, input_shape=(WINDOW, CHANNELS), class_labels=CLASS_LABELS
    )
    with pytest.raises(ArtifactError, match="cannot load keras model"):
        load_backend(m, reg.verified_artifact(m))


def test_health_check_fails_when_the_model_cannot_predict() -> None:
    """The deployment's check_health (what Serve calls) raises on a broken model."""
    from deployments.model import ModelDeployment

    cls = ModelDeployment.func_or_class

    class Broken:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("weights corrupted in memory")

    class WrongShape:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch), 3), np.float32)

    class Healthy:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return np.full((len(batch), 8), 1 / 8, np.float32)

    replica = cls.__new__(cls)
    # The expected width is the manifest's (its kind's), not the number of class labels.
    replica.manifest = type("M", (), {"class_labels": tuple("abcdefgh"), "width": 8,
                                      "kind": "multiclass"})()
    replica._probe = np.zeros((1, 50, 9), np.float32)
    replica.backend = Healthy()
    replica.check_health()
    for backend in (Broken(), WrongShape()):
        replica.backend = backend
        with pytest.raises(Exception):  # noqa: B017 - any failure marks the replica unhealthy
            replica.check_health()
    replica.manifest = type("M", (), {"class_labels": (), "width": 3, "kind": "regression"})()
    replica.backend = WrongShape()  # three values a row: a healthy horizon-3 regressor
    replica.check_health()


def test_precision_bench_reports_each_precision_that_runs(
    registry: Registry, tmp_path: Path
) -> None:
    from serve.cli import main

    out = tmp_path / "out"
    rc = main(["bench-precision", "--registry", str(registry.root), "--device", "cpu",
               "--seconds", "0.2", "--batch", "16", "--out", str(out)])
    assert rc == 0
    import json

    rows = json.loads((out / "precision.json").read_text())["results"]
    ran = {(r["framework"], r["precision"]) for r in rows}
    # On a CPU: fp32 and bf16 for torch and keras; fp16 falls back to fp32, so no row.
    assert ran == {("torch", "fp32"), ("torch", "bf16"),
                   ("tensorflow", "fp32"), ("tensorflow", "bf16")}
    for r in rows:
        assert r["rows_per_s"] > 0 and r["label_agreement"] >= LABEL_AGREEMENT
    assert "| bf16 |" in (out / "precision.md").read_text()


class _Touch:
    """Unpickling this runs ``touch <marker>`` (a code pickle, as an attacker would ship)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_torch_artifact_with_a_code_pickle_is_refused_by_weights_only(
    tmp_path: Path, registry: Registry, manifests: dict[str, Manifest]
) -> None:
    """A real v2 state_dict with one more entry whose unpickling runs a shell command,
    registered with a correct sha256 (the digest check passes): weights_only loading
    refuses it before any code runs. Full unpickling of the same file would run it."""
    torch = pytest.importorskip("torch")
    v2 = manifests["torch"]
    state = torch.load(registry.verified_artifact(v2), map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "payload": _Touch(marker)}, evil)
    reg = Registry(tmp_path / "reg")
    m = reg.register("evil", "v1", "torch", evil, input_shape=(WINDOW, CHANNELS),
                     class_labels=CLASS_LABELS, extra=dict(v2.extra))
    with pytest.raises(ArtifactError, match="cannot load torch state_dict") as info:
        load_backend(m, reg.verified_artifact(m))
    assert "weights_only" in str(info.value.__cause__) or "Unsupported global" in str(
        info.value.__cause__), info.value.__cause__
    assert not marker.exists(), "the pickle's code ran"
    # The payload is real: loading the file without weights_only runs it.
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()
