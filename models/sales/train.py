"""Train and register the two demo versions of the ``sales`` forecast (regression, tabular).

- v1: scikit-learn Pipeline (one-hot store / weekday / month, scaled price and distance,
  HistGradientBoostingRegressor with a Poisson loss) fitted on the DataFrame (joblib)
- v2: PyTorch MLP over the schema-encoded float64 matrix (state_dict, ``SalesNet``)

Both declare ``kind="regression"`` with the one output ``units_sold`` and the tabular
``input_schema`` of models/sales/data.py, and record held-out MAE, RMSE and R^2 in
``extra["metrics"]``. Frameworks are imported inside the per-version functions, so
importing this module costs nothing. ``python -m models.sales.train`` trains into
``./registry`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.kinds import REGRESSION
from models.reference import REFERENCE_FILE, build_reference
from models.registry import Manifest, Registry
from models.sales.data import (
    DAYS,
    INPUT_SCHEMA,
    MONTHS,
    STORES,
    TARGET,
    encode_frame,
    train_test,
)
from models.verify import VERIFY_FILE, VERIFY_ROWS

__all__ = ["MODEL_NAME", "OUTPUTS", "format_table", "regression_metrics", "train_all"]

MODEL_NAME = "sales"
OUTPUTS: tuple[str, ...] = (TARGET,)
INPUT_SHAPE = (len(INPUT_SCHEMA),)
CATEGORICAL = ("store", "day_of_week", "month")
NUMERIC = ("price", "competitor_distance_km")
FLAGS = ("holiday", "promo")

# (artifact path, held-out predictions (n,), extra, description)
Trained = tuple[Path, np.ndarray, dict[str, Any], str]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Held-out MAE, RMSE and R^2 (numpy, so the numbers need no framework to check)."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    err = p - t
    total = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / total if total > 0 else float("nan")
    return {
        "mae": round(float(np.abs(err).mean()), 4),
        "rmse": round(float(np.sqrt((err**2).mean())), 4),
        "r2": round(r2, 4),
    }


def build_pipeline(seed: int = 0) -> Any:
    """v1's unfitted Pipeline; explicit categories so any subset of rows encodes the same."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    onehot = OneHotEncoder(
        categories=[list(STORES), list(range(DAYS)), list(range(1, MONTHS + 1))],
        handle_unknown="ignore",
        sparse_output=False,
    )
    columns = ColumnTransformer(
        [
            ("onehot", onehot, list(CATEGORICAL)),
            ("scale", StandardScaler(), list(NUMERIC)),
            ("flags", "passthrough", list(FLAGS)),
        ]
    )
    # Poisson loss: a log link, as retail effects multiply; units sold are counts.
    gbm = HistGradientBoostingRegressor(
        loss="poisson", max_iter=300, learning_rate=0.1, random_state=seed
    )
    return Pipeline([("columns", columns), ("gbm", gbm)])


def _train_sklearn(
    X: Any, y: np.ndarray, Xt: Any, yt: np.ndarray, out: Path, seed: int
) -> Trained:
    import joblib
    from threadpoolctl import threadpool_limits

    pipe = build_pipeline(seed)
    with threadpool_limits(limits=1):  # the demo trains on one core
        pipe.fit(X, y)
        pred = np.asarray(pipe.predict(Xt), dtype=np.float64)
    path = out / "sales-gbm.joblib"
    joblib.dump(pipe, path, compress=3)
    desc = "HistGradientBoosting (Poisson) on one-hot store/weekday/month, scikit-learn"
    return path, pred, {}, desc


def _train_torch(
    X: Any, y: np.ndarray, Xt: Any, yt: np.ndarray, out: Path, seed: int
) -> Trained:
    import torch

    from models.sales.nets import SalesNet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        init_kwargs = {"n_stores": len(STORES), "hidden": 64}
        model = SalesNet(**init_kwargs)
        xs = torch.from_numpy(encode_frame(X))
        ys = torch.from_numpy(y).to(torch.float32).unsqueeze(1)
        model.fit_normalization(xs, ys)
        epochs, batch = 40, 128
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=1e-2, total_steps=epochs * ((len(xs) + batch - 1) // batch)
        )
        loss_fn = torch.nn.PoissonNLLLoss(log_input=True, full=False)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(xs), generator=gen).split(batch):
                opt.zero_grad()
                loss = loss_fn(model.log_mean(xs[idx]), ys[idx])
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.inference_mode():
            pred = model(torch.from_numpy(encode_frame(Xt)))[:, 0].double().numpy()
    finally:
        torch.set_num_threads(threads)
    path = out / "sales-mlp.pt"
    torch.save(model.state_dict(), path)
    extra = {"module_class": "models.sales.nets:SalesNet", "init_kwargs": init_kwargs}
    return path, pred, extra, "MLP over the schema-encoded features (Poisson loss), PyTorch"


_TRAINERS: dict[str, tuple[str, Callable[..., Trained]]] = {
    "v1": ("sklearn", _train_sklearn),
    "v2": ("torch", _train_torch),
}


def train_all(
    registry_root: str | Path,
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 1000,
    quiet: bool = False,
    *,
    versions: tuple[str, ...] = ("v1", "v2"),
    overwrite: bool = True,
) -> list[Manifest]:
    """Train v1 (sklearn) and v2 (torch) and register them as ``sales`` (regression).

    Metrics are measured on a held-out frame drawn with another seed; its first rows,
    encoded as the float64 matrix the server feeds the models, are registered beside
    each artifact (``verify.npy``) for the backends' load-time checks, and the reference
    statistics of the held-out rows and predictions (``reference.json``) for drift. Retraining
    overwrites the demo versions unless ``overwrite=False``.
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
    (X, y), (Xt, yt) = train_test(n_train, n_test, seed)
    held_out = np.ascontiguousarray(encode_frame(Xt.iloc[:VERIFY_ROWS]), dtype=np.float64)
    manifests = []
    with tempfile.TemporaryDirectory(prefix="abserve-train-") as tmp:
        verify = Path(tmp) / VERIFY_FILE
        np.save(verify, held_out, allow_pickle=False)
        for version in versions:
            framework, trainer = _TRAINERS[version]
            start = time.perf_counter()
            path, pred, extra, description = trainer(X, y, Xt, yt, Path(tmp), seed)
            seconds = time.perf_counter() - start
            metrics = regression_metrics(yt, pred)
            reference = build_reference(
                encode_frame(Xt), INPUT_SHAPE, names=[f["name"] for f in INPUT_SCHEMA],
                outputs=np.asarray(pred, dtype=np.float64).reshape(-1, 1), source="held-out",
            ).save(Path(tmp) / f"{version}-{REFERENCE_FILE}")
            extra["metrics"] = {**metrics, "rows": int(len(yt)), "source": "held-out"}
            extra["verify_windows"] = {
                "file": VERIFY_FILE, "rows": len(held_out), "source": "held-out",
            }
            manifest = registry.register(
                MODEL_NAME,
                version,
                framework,
                path,
                input_shape=INPUT_SHAPE,
                input_dtype="float64",
                class_labels=(),
                accuracy=None,
                training_time_s=round(seconds, 2),
                extra=extra,
                description=description,
                overwrite=overwrite,
                attachments={VERIFY_FILE: verify, REFERENCE_FILE: reference},
                kind=REGRESSION,
                outputs=OUTPUTS,
                input_schema=INPUT_SCHEMA,
            )
            manifests.append(manifest)
            if not quiet:
                print(
                    f"trained {MODEL_NAME} {version} ({framework}): MAE {metrics['mae']:.2f} "
                    f"RMSE {metrics['rmse']:.2f} R2 {metrics['r2']:.3f} in {seconds:.1f}s",
                    file=sys.stderr,
                )
    return manifests


def format_table(manifests: list[Manifest]) -> str:
    rows: list[tuple[str, ...]] = [("version", "framework", "mae", "rmse", "r2", "seconds")]
    for m in manifests:
        got = m.extra.get("metrics") or {}
        cells = [f"{got[k]:.3f}" if k in got else "-" for k in ("mae", "rmse", "r2")]
        sec = "-" if m.training_time_s is None else f"{m.training_time_s:.1f}"
        rows.append((m.version, m.framework, *cells, sec))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and register the sales demo models.")
    parser.add_argument("--registry", default="registry", help="registry root directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifests = train_all(args.registry, args.seed, args.n_train, args.n_test)
    total = time.perf_counter() - start
    print(format_table(manifests))
    print(f"total {total:.1f}s into {Path(args.registry).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

