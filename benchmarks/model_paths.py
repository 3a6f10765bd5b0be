"""How fast each way of running the demo models is, and how far its probabilities are from
the plain call's: the measurement behind the inference paths the backends choose.

    python -m benchmarks.model_paths [--registry DIR] [--versions v1,v2,v3]
                                     [--batches 1,2,14,64] [--seconds 0.4] [--json OUT]

Without ``--registry`` (or when it lacks a version) the versions are trained into a
temporary registry first, as ``abserve train`` does. Everything runs single-threaded,
as a replica does. Per version and batch size each candidate is timed in interleaved
rounds (so drift hits all alike) and the median call is reported, with the largest
|difference| of its probabilities from the reference (the first candidate: the
framework called as-is). Candidates whose package is not installed are skipped:

- v1 (scikit-learn forest): ``predict_proba``; a loop over the fitted trees via
  ``DecisionTreeClassifier.predict_proba``; the loop of ``models.forest`` (the
  trees' compiled ``Tree.predict``); ``tl2cgen`` (treelite, compiled with gcc);
  ONNX Runtime (``skl2onnx``).
- v2 (torch CNN): eager under ``inference_mode`` and ``no_grad``; ``torch.jit.trace``
  (what the backend serves on cpu); trace + ``freeze``; ``torch.compile`` with
  ``--torch-compile`` (about half a minute to compile).
- v3 (Keras GRU): ``model(x, training=False)``, ``model.predict``, ``tf.function``
  (what the backend serves on cpu), ``tf.function(jit_compile=True)`` (XLA).

Each version also gets a ``backend.predict`` row: the loaded backend end to end
(input check, the path it chose, the output check).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Row", "main", "measure"]

Fn = Callable[[np.ndarray], Any]


@dataclass
class Row:
    version: str
    path: str
    batch: int
    us_per_call: float
    max_dp: float | None  # against the version's reference path; None: not comparable
    build_s: float | None = None  # one-time cost to make this path (compile, trace, convert)


@dataclass
class Candidate:
    name: str
    fn: Fn  # windows -> probabilities (float64 or float32)
    build_s: float | None = None
    comparable: bool = True


def _softmax(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _timed(make: Callable[[], Fn]) -> tuple[Fn, float]:
    start = time.perf_counter()
    fn = make()
    return fn, time.perf_counter() - start


# --------------------------------------------------------------------------- v1 sklearn


def _sklearn_candidates(artifact: Path, tmp: Path) -> list[Candidate]:
    import joblib

    from models.forest import compile_forest, set_single_threaded

    pipe = joblib.load(artifact)
    set_single_threaded(pipe)
    forest = pipe.steps[-1][1]
    head = pipe[:-1]
    k = int(forest.n_classes_)
    out = [Candidate("predict_proba", pipe.predict_proba)]

    def tree_api_loop(X: np.ndarray) -> np.ndarray:
        F = head.transform(X)
        acc = np.zeros((len(F), k))
        for tree in forest.estimators_:
            acc += tree.predict_proba(F, check_input=False)
        acc /= len(forest.estimators_)
        return acc

    out.append(Candidate("tree loop, DecisionTree.predict_proba", tree_api_loop))

    def make_loop() -> Fn:
        fast, reason = compile_forest(pipe)
        if fast is None:
            raise RuntimeError(reason)
        return fast

    fast, secs = _timed(make_loop)
    out.append(Candidate("forest-tree-loop (served)", fast, secs))
    out.append(Candidate("(window_stats alone)", head.transform, comparable=False))

    try:
        import tl2cgen
        import treelite
    except ImportError:
        print("tl2cgen/treelite not installed: skipped", file=sys.stderr)
    else:
        def make_tl2cgen() -> Fn:
            lib = tmp / "forest.so"
            model = treelite.sklearn.import_model(forest)
            tl2cgen.export_lib(model, toolchain="gcc", libpath=str(lib),
                               params={"parallel_comp": 8}, verbose=False)
            predictor = tl2cgen.Predictor(str(lib), nthread=1, verbose=False)

            def run(X: np.ndarray) -> np.ndarray:
                F = np.ascontiguousarray(head.transform(X), dtype=np.float32)
                return predictor.predict(tl2cgen.DMatrix(F, dtype="float32"))[:, 0, :]

            return run

        fn, secs = _timed(make_tl2cgen)
        out.append(Candidate("tl2cgen (gcc)", fn, secs))

    try:
        import onnxruntime as ort
        from skl2onnx import to_onnx
    except ImportError:
        print("onnxruntime/skl2onnx not installed: skipped", file=sys.stderr)
    else:
        def make_ort() -> Fn:
            n_features = int(forest.n_features_in_)
            onx = to_onnx(forest, np.zeros((1, n_features), np.float32),
                          options={id(forest): {"zipmap": False}})
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(onx.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name

            def run(X: np.ndarray) -> np.ndarray:
                F = np.ascontiguousarray(head.transform(X), dtype=np.float32)
                return sess.run(["probabilities"], {name: F})[0]

            return run

        fn, secs = _timed(make_ort)
        out.append(Candidate("onnxruntime (skl2onnx)", fn, secs))
    return out


# --------------------------------------------------------------------------- v2 torch


def _torch_candidates(manifest: Any, artifact: Path, torch_compile: bool) -> list[Candidate]:
    import torch

    from deployments.backends.torch import _import_class

    torch.set_num_threads(1)
    model = _import_class(manifest.extra["module_class"])(**manifest.extra["init_kwargs"])
    model.load_state_dict(torch.load(artifact, map_location="cpu", weights_only=True))
    model.eval()

    def wrap(mod: Any, mode: Any = torch.inference_mode) -> Fn:
        def run(X: np.ndarray) -> np.ndarray:
            with mode():
                return _softmax(mod(torch.from_numpy(X)).numpy())

        return run

    from models.activity.data import make_windows

    example = torch.from_numpy(make_windows(2, seed=1)[0])
    out = [Candidate("eager, inference_mode", wrap(model)),
           Candidate("eager, no_grad", wrap(model, torch.no_grad))]

    def trace() -> Any:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(model, example, check_trace=False)

    traced, secs = _timed(trace)
    out.append(Candidate("torchscript-trace (served)", wrap(traced), secs))

    def freeze() -> Any:
        return torch.jit.freeze(trace().eval())

    frozen, secs = _timed(freeze)
    out.append(Candidate("trace + jit.freeze", wrap(frozen), secs))

    def export_gate() -> Fn:
        from torch.export import Dim, export

        export(model, (example,), strict=False, dynamic_shapes=({0: Dim("batch", min=1)},))
        return lambda X: None

    _, secs = _timed(export_gate)
    print(f"torch.export gate of the trace: {secs:.2f} s at load", file=sys.stderr)
    if torch_compile:
        def compile_() -> Any:
            compiled = torch.compile(model, dynamic=True)
            with torch.inference_mode():
                compiled(example)
            return compiled

        compiled, secs = _timed(compile_)
        out.append(Candidate("torch.compile (inductor)", wrap(compiled), secs))
    return out


# --------------------------------------------------------------------------- v3 keras


def _keras_candidates(manifest: Any, artifact: Path) -> list[Candidate]:
    from deployments.backends.tensorflow import _import_tf

    tf, keras = _import_tf(1)
    model = keras.models.load_model(artifact, safe_mode=True, compile=False)
    spec = [tf.TensorSpec((None, *manifest.input_shape), tf.float32)]

    def call(X: np.ndarray) -> np.ndarray:
        with tf.device("/CPU:0"):
            return np.asarray(model(X, training=False))

    def predict(X: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(X, verbose=0, batch_size=len(X)))

    def graph(jit: bool) -> Fn:
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec,
                         jit_compile=jit)

        def run(X: np.ndarray) -> np.ndarray:
            with tf.device("/CPU:0"):
                return fn(X).numpy()

        run(np.zeros((2, *manifest.input_shape), np.float32))  # trace (and, for XLA, one compile)
        return run

    plain, secs_g = _timed(lambda: graph(False))
    xla, secs_x = _timed(lambda: graph(True))
    return [Candidate("model(x, training=False)", call),
            Candidate("model.predict", predict),
            Candidate("tf-function (served)", plain, secs_g),
            Candidate("tf.function(jit_compile=True), XLA: compiles per batch size", xla, secs_x)]


# --------------------------------------------------------------------------- timing


def _time_all(cands: list[Candidate], X: np.ndarray, seconds: float) -> list[float]:
    """Median µs per call of each candidate, timed in interleaved rounds."""
    for c in cands:
        for _ in range(3):
            c.fn(X)
    rounds = 7
    per: list[list[float]] = [[] for _ in cands]
    # Calls per block so one block of the slowest candidate takes about seconds / rounds.
    costs = []
    for c in cands:
        start = time.perf_counter()
        c.fn(X)
        costs.append(time.perf_counter() - start)
    for _ in range(rounds):
        for i, c in enumerate(cands):
            calls = max(1, int(seconds / rounds / max(costs[i], 1e-6) / len(cands)))
            start = time.perf_counter()
            for _ in range(calls):
                c.fn(X)
            per[i].append((time.perf_counter() - start) / calls * 1e6)
    return [statistics.median(p) for p in per]


def measure(
    registry: Path, versions: tuple[str, ...], batches: tuple[int, ...], seconds: float,
    torch_compile: bool = False,
) -> list[Row]:
    from deployments.backends import load_backend
    from models.activity.data import make_windows
    from models.activity.train import MODEL_NAME
    from models.registry import Registry

    reg = Registry(registry)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="abserve-paths-") as tmp:
        for version in versions:
            manifest = reg.manifest(MODEL_NAME, version)
            artifact = reg.verified_artifact(manifest)
            if manifest.framework == "sklearn":
                cands = _sklearn_candidates(artifact, Path(tmp))
            elif manifest.framework == "torch":
                cands = _torch_candidates(manifest, artifact, torch_compile)
            else:
                cands = _keras_candidates(manifest, artifact)
            backend, secs = _timed(lambda m=manifest, a=artifact: load_backend(m, a))
            path = getattr(backend, "inference_path", None)
            cands.append(Candidate(f"backend.predict [{path}]", backend.predict, secs))
            for batch in batches:
                X = make_windows(batch, seed=1000 + batch)[0]
                ref = cands[0].fn(X)
                us = _time_all(cands, X, seconds)
                for c, t in zip(cands, us, strict=True):
                    dp = None
                    if c.comparable:
                        dp = float(np.abs(np.asarray(c.fn(X), np.float64) - ref).max())
                    rows.append(Row(version, c.name, batch, t, dp, c.build_s))
    return rows


def _format(rows: list[Row]) -> str:
    lines = ["| version | path | rows | µs per call | max abs dp | build s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        dp = "-" if r.max_dp is None else ("0" if r.max_dp == 0 else f"{r.max_dp:.2g}")
        build = "-" if r.build_s is None else f"{r.build_s:.2f}"
        lines.append(f"| {r.version} | {r.path} | {r.batch} | {r.us_per_call:,.0f} | {dp} "
                     f"| {build} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="registry with the activity demo versions")
    parser.add_argument("--versions", default="v1,v2,v3")
    parser.add_argument("--batches", default="1,2,14,64")
    parser.add_argument("--seconds", type=float, default=0.4,
                        help="time per version, batch size and candidate (about)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also measure torch.compile (about 30 s to compile)")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    versions = tuple(v for v in args.versions.split(",") if v)
    batches = tuple(int(b) for b in args.batches.split(","))

    with tempfile.TemporaryDirectory(prefix="abserve-paths-reg-") as tmp:
        registry = Path(args.registry) if args.registry else Path(tmp)
        from models.activity.train import MODEL_NAME, train_all
        from models.registry import Registry

        missing = tuple(v for v in versions if v not in Registry(registry).versions(MODEL_NAME))
        if missing:
            print(f"training {missing} into {registry}", file=sys.stderr)
            train_all(registry, versions=missing, quiet=True)
        rows = measure(registry, versions, batches, args.seconds, args.torch_compile)
    print(_format(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in asdict(r).items()} for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
