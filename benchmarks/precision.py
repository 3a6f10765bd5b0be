"""fp32 against fp16/bf16, per framework, on the device at hand: rows/s and accuracy drift.

Loads each registered version of a model through the same backends the
deployments use (so torch.autocast and Keras' mixed-precision policy are the
ones measured), predicts the same windows at each precision, and reports
rows per second, the ratio to fp32, the largest probability difference from
fp32 and the share of labels that agree. On a CPU, fp16 is not run (the
backends fall back to fp32); on a GPU every precision is.

    abserve bench-precision --device cuda --registry registry --out bench-results

Figures are ratios measured side by side in one run; absolute rows/s on a
shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["PrecisionResult", "markdown", "run", "run_from_args"]

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class PrecisionResult:
    version: str
    framework: str
    device: str
    precision: str  # what ran (a CPU runs fp16 requests in fp32: such rows are skipped)
    batch: int
    rows_per_s: float
    ratio_to_fp32: float
    max_abs_diff: float
    label_agreement: float


def _time(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float) -> float:
    predict(batch)  # warm-up: first-call compilation, allocator
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(batch)
        n += 1
    return n * len(batch) / (time.perf_counter() - started)


def run(registry: Path, model: str, device: str, batch: int, seconds: float,
        precisions: tuple[str, ...] = PRECISIONS) -> list[PrecisionResult]:
    from deployments.backends import load_backend
    from models import Registry
    from models.activity.data import make_windows

    reg = Registry(registry)
    windows = make_windows(max(batch, 256), seed=11)[0]
    results: list[PrecisionResult] = []
    for version in reg.versions(model):
        manifest = reg.manifest(model, version)
        if manifest.framework == "sklearn":
            continue  # scikit-learn has one precision
        artifact = reg.verified_artifact(manifest)
        reference = None
        fp32_rate = 0.0
        for precision in ("fp32", *[p for p in precisions if p != "fp32"]):
            backend = load_backend(manifest, artifact, device=device, precision=precision)
            ran = backend.precision  # type: ignore[attr-defined]
            if ran != precision:
                continue  # fell back (fp16 on a CPU): nothing new to measure
            out = backend.predict(windows)
            if reference is None:
                reference = out
            rate = _time(backend.predict, windows[:batch], seconds)
            if precision == "fp32":
                fp32_rate = rate
            results.append(PrecisionResult(
                version=version,
                framework=manifest.framework,
                device=backend.device,  # type: ignore[attr-defined]
                precision=ran,
                batch=batch,
                rows_per_s=round(rate, 1),
                ratio_to_fp32=round(rate / fp32_rate, 3) if fp32_rate else 1.0,
                max_abs_diff=float(np.abs(out - reference).max()),
                label_agreement=float((out.argmax(1) == reference.argmax(1)).mean()),
            ))
    return results


def markdown(results: list[PrecisionResult]) -> str:
    lines = [
        "| version | framework | device | precision | batch | rows/s | x fp32 "
        "| max abs diff | labels agree |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.version} | {r.framework} | {r.device} | {r.precision} | {r.batch} "
            f"| {r.rows_per_s:,.0f} | {r.ratio_to_fp32:.2f} | {r.max_abs_diff:.4f} "
            f"| {r.label_agreement:.1%} |"
        )
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    results = run(Path(args.registry), args.model, args.device, args.batch, args.seconds)
    table = markdown(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.md").write_text(table + "\n")
    (out / "precision.json").write_text(json.dumps(
        {"machine": platform.node(), "results": [asdict(r) for r in results]}, indent=2
    ) + "\n")
    print(f"wrote {out / 'precision.md'} and {out / 'precision.json'}")
    return 0 if results else 1

