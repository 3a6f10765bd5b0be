"""Train and register the three demo versions of the ``activity`` model.

- v1: scikit-learn RandomForest on window statistics (joblib)
- v2: PyTorch 1-D CNN (state_dict, loaded with ``weights_only=True``)
- v3: Keras GRU (``.keras``, loaded with ``safe_mode=True``)

Frameworks are imported inside the per-version functions, so importing this
module costs nothing. Run ``python -m models.activity.train`` to train into
``./registry`` and print a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.activity.data import CHANNELS, CLASS_LABELS, WINDOW, make_windows
from models.reference import REFERENCE_FILE, build_reference
from models.registry import Manifest, Registry
from models.verify import VERIFY_FILE, sample_windows, write_windows

__all__ = ["MODEL_NAME", "train_all"]

MODEL_NAME = "activity"
INPUT_SHAPE = (WINDOW, CHANNELS)
TEST_SEED_OFFSET = 10_000

# (artifact path, held-out predicted label indices (n,), extra, description)
Trained = tuple[Path, np.ndarray, dict[str, Any], str]


def _train_sklearn(
    X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, out: Path, seed: int
) -> Trained:
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from models.activity.features import window_stats

    pipe = Pipeline(
        [
            ("stats", FunctionTransformer(window_stats, validate=False)),
            (
                "forest",
                RandomForestClassifier(
                    n_estimators=50, min_samples_leaf=2, n_jobs=2, random_state=seed
                ),
            ),
        ]
    )
    pipe.fit(X, y)
    pipe.set_params(forest__n_jobs=1)  # replicas share the cores
    pred = np.asarray(pipe.predict(Xt))
    path = out / "activity-rf.joblib"
    joblib.dump(pipe, path, compress=3)
    desc = "RandomForest (50 trees) on per-window statistics, scikit-learn"
    return path, pred, {"output": "probabilities"}, desc


def _train_torch(
    X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, out: Path, seed: int
) -> Trained:
    import torch
    from torch import nn

    from models.activity.nets import ActivityCNN

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    init_kwargs = {"channels": CHANNELS, "n_classes": len(CLASS_LABELS), "width": 32}
    model = ActivityCNN(**init_kwargs)
    xs = torch.from_numpy(X)
    ys = torch.from_numpy(y)
    model.fit_normalization(xs)
    epochs, batch = 10, 64
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * ((len(xs) + batch - 1) // batch)
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xs), generator=gen).split(batch):
            opt.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(Xt)).argmax(dim=1).numpy()
    path = out / "activity-cnn.pt"
    torch.save(model.state_dict(), path)
    extra = {
        "module_class": "models.activity.nets:ActivityCNN",
        "init_kwargs": init_kwargs,
        "output": "logits",
    }
    return path, pred, extra, "1-D CNN over the 9 sensor channels, PyTorch"


def _train_keras(
    X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, out: Path, seed: int
) -> Trained:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input(shape=INPUT_SHAPE)
    # Built-in layers only, so the file loads with safe_mode=True and no custom code:
    # raw channels, window-centred channels, squared sensor magnitudes and those centred.
    centred = layers.Subtract()([inputs, layers.GlobalAveragePooling1D(keepdims=True)(inputs)])
    groups = np.kron(np.eye(CHANNELS // 3), np.ones((3, 1)))  # sums x^2+y^2+z^2 per sensor
    sq_norm = layers.Dense(
        CHANNELS // 3,
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(groups),
        name="sensor_sq_norm",
    )(layers.Multiply()([inputs, inputs]))
    sq_centred = layers.Subtract()([sq_norm, layers.GlobalAveragePooling1D(keepdims=True)(sq_norm)])
    expanded = layers.Concatenate()([inputs, centred, sq_norm, sq_centred])
    norm = layers.Normalization(axis=-1)
    sample = keras.Model(inputs, expanded).predict(X, verbose=0, batch_size=512)
    norm.adapt(sample.reshape(-1, sample.shape[-1]))
    h = norm(expanded)
    # Halving the time axis keeps the recurrence short and cheap on CPU.
    h = layers.Conv1D(32, 4, strides=2, activation="relu")(h)
    h = layers.GRU(32)(h)
    outputs = layers.Dense(len(CLASS_LABELS), activation="softmax")(h)
    model = keras.Model(inputs, outputs, name="activity_gru")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(X, y, epochs=10, batch_size=64, verbose=0, shuffle=True)
    proba = np.asarray(model(Xt, training=False))
    pred = proba.argmax(axis=1)
    path = out / "activity-gru.keras"
    model.save(path)
    return path, pred, {"output": "probabilities"}, "Conv + GRU recurrent network, Keras"


_TRAINERS: dict[str, tuple[str, Callable[..., Trained]]] = {
    "v1": ("sklearn", _train_sklearn),
    "v2": ("torch", _train_torch),
    "v3": ("tensorflow", _train_keras),
}


def train_all(
    registry_root: str | Path,
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 2000,
    quiet: bool = False,
    *,
    versions: tuple[str, ...] = ("v1", "v2", "v3"),
    overwrite: bool = True,
) -> list[Manifest]:
    """Train v1 (sklearn), v2 (torch) and v3 (keras) and register them as ``activity``.

    Accuracy is measured on a separately generated held-out set (another seed); its
    first windows are registered beside each artifact (``verify.npy``) as the windows
    on which a faster inference path must equal the plain one, and the reference
    statistics of the held-out inputs and of the version's predicted labels on them
    (``reference.json``, models/reference.py) as what drift is judged against. For v1 the path is
    chosen and recorded here (``extra["inference_path"]``, see ``models.forest``).
    Retraining overwrites the demo versions unless ``overwrite=False``.
    """
    unknown = [v for v in versions if v not in _TRAINERS]
    if unknown:
        raise ValueError(f"unknown demo versions {unknown}; choose from {list(_TRAINERS)}")
    registry = Registry(registry_root)
    if not overwrite:
        taken = [v for v in versions if v in registry.versions(MODEL_NAME)]
        if taken:
            from serve.errors import ArtifactError

            raise ArtifactError(
                f"{MODEL_NAME} versions {taken} already exist under {registry.root}; "
                "pass overwrite to retrain them"
            )
    X, y = make_windows(n_train, seed)
    Xt, yt = make_windows(n_test, seed + TEST_SEED_OFFSET)
    manifests = []
    held_out = sample_windows(Xt, INPUT_SHAPE)
    with tempfile.TemporaryDirectory(prefix="abserve-train-") as tmp:
        verify = write_windows(Path(tmp) / VERIFY_FILE, held_out)
        for version in versions:
            framework, trainer = _TRAINERS[version]
            start = time.perf_counter()
            path, pred, extra, description = trainer(X, y, Xt, yt, Path(tmp), seed)
            seconds = time.perf_counter() - start
            pred = np.asarray(pred, dtype=np.int64).ravel()
            accuracy = float((pred == yt).mean())
            reference = build_reference(
                Xt, INPUT_SHAPE, labels=pred, label_names=CLASS_LABELS, source="held-out"
            ).save(Path(tmp) / f"{version}-{REFERENCE_FILE}")
            extra["verify_windows"] = {
                "file": VERIFY_FILE, "rows": len(held_out), "source": "held-out",
            }
            if framework == "sklearn":
                from models.forest import registration_extra

                extra.update(registration_extra(path, INPUT_SHAPE, extra, held_out))
            manifest = registry.register(
                MODEL_NAME,
                version,
                framework,
                path,
                input_shape=INPUT_SHAPE,
                class_labels=CLASS_LABELS,
                accuracy=round(accuracy, 4),
                training_time_s=round(seconds, 2),
                extra=extra,
                description=description,
                overwrite=overwrite,
                attachments={VERIFY_FILE: verify, REFERENCE_FILE: reference},
            )
            manifests.append(manifest)
            if not quiet:
                print(
                    f"trained {MODEL_NAME} {version} ({framework}): "
                    f"accuracy {accuracy:.3f} in {seconds:.1f}s",
                    file=sys.stderr,
                )
    return manifests


def format_table(manifests: list[Manifest]) -> str:
    rows = [("version", "framework", "accuracy", "seconds")]
    for m in manifests:
        acc = "-" if m.accuracy is None else f"{m.accuracy:.3f}"
        sec = "-" if m.training_time_s is None else f"{m.training_time_s:.1f}"
        rows.append((m.version, m.framework, acc, sec))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and register the activity demo models.")
    parser.add_argument("--registry", default="registry", help="registry root directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifests = train_all(args.registry, args.seed, args.n_train, args.n_test)
    total = time.perf_counter() - start
    print(format_table(manifests))
    print(f"total {total:.1f}s into {Path(args.registry).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
