"""Batch scoring throughput: `abserve batch-predict` on Ray Data against a plain loop over
the same backend in one process (issue 19 item 5).

    abserve bench-batch --config abserve.yaml --version v1 --rows 20000 [--address ADDR]

Both score the same windows (the demo's generator, written once as an ``.npy`` input)
with the version's backend loaded as the model replicas load it
(``serve.offline.scoring._load``), in batches of ``--batch-size``:

- plain loop: one process reads the file and calls ``backend.predict`` batch after batch;
- Ray Data: ``serve.offline.scoring.run_batch``, the command's own path (actor pool,
  Parquet output, the errors file), on the cluster at ``--address`` or a local Ray.

The Ray Data figure is the whole job as a user waits for it (actors start, models load,
outputs are written); its scoring alone is printed as well. Figures are ratios within one
run; absolute rows/s on a shared machine vary by 20-40 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["markdown", "run", "run_from_args"]


def _windows(model: str, rows: int, seed: int) -> np.ndarray:
    """Inputs of the model's shape: the activity demo's windows, else random rows of the
    manifest's input shape."""
    if model == "activity":
        from models.activity.data import make_windows

        return make_windows(rows, seed=seed)[0].astype(np.float32)
    raise ValueError(f"bench-batch generates inputs for the demo model 'activity' only, "
                     f"not {model!r}")


def plain_loop(registry: str, model: str, settings: dict[str, Any], path: Path,
               batch_size: int) -> dict[str, float]:
    """Load the backend, read the file, predict every batch: rows/s of the whole, and of
    the predict calls alone."""
    from serve.offline.scoring import _load

    started = time.perf_counter()
    _, backend = _load(registry, model, settings)
    loaded = time.perf_counter()
    x = np.load(path)
    outputs = []
    scoring = time.perf_counter()
    for i in range(0, len(x), batch_size):
        outputs.append(np.asarray(backend.predict(x[i:i + batch_size])))
    done = time.perf_counter()
    assert sum(len(o) for o in outputs) == len(x)
    return {"seconds": done - started, "load_s": loaded - started,
            "rows_per_s": len(x) / (done - started),
            "scoring_rows_per_s": len(x) / (done - scoring)}


def run(config_path: str, version: str, rows: int, batch_size: int, address: str | None,
        actors: int | None, num_cpus: int | None, seed: int = 5) -> dict[str, Any]:
    from serve.config import load_config
    from serve.offline.scoring import BatchJob, ray_session, read_input, run_batch

    config = load_config(config_path)
    settings = config.model_config_for(version)
    with tempfile.TemporaryDirectory(prefix="abserve-bench-batch-") as tmp:
        work = Path(tmp)
        path = work / "windows.npy"
        np.save(path, _windows(config.model, rows, seed))
        plain = plain_loop(config.registry, config.model, settings.model_dump(mode="json"),
                           path, batch_size)
        with ray_session(address, num_cpus) as where:
            import ray

            cpus = ray.cluster_resources().get("CPU", 0.0)
            nodes = sum(1 for n in ray.nodes() if n["Alive"])
            started = time.perf_counter()
            table = read_input(str(path))
            job = BatchJob(config, {version: settings}, batch_size=batch_size, actors=actors)
            with open(os.devnull, "w") as quiet:
                result = run_batch(job, table, work / "out.parquet",
                                   work / "out.errors.parquet", stream=quiet)
            wall = time.perf_counter() - started
    if result.scored != rows:
        raise RuntimeError(f"Ray Data scored {result.scored} of {rows} rows "
                           f"({result.errors} errors)")
    return {
        "model": config.model, "version": version, "rows": rows, "batch_size": batch_size,
        "where": where, "cluster_cpus": cpus, "cluster_nodes": nodes,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "plain": {k: round(v, 3) for k, v in plain.items()},
        "ray_data": {"seconds": round(wall, 3), "rows_per_s": round(rows / wall, 1),
                     "job_seconds": round(result.seconds, 3),
                     "job_rows_per_s": round(result.rows_per_s, 1),
                     "nodes": result.nodes},
        "ratio": round((rows / wall) / plain["rows_per_s"], 4),
    }


def markdown(r: dict[str, Any]) -> str:
    p, d = r["plain"], r["ray_data"]
    return "\n".join([
        f"Batch scoring, {r['model']} {r['version']}: {r['rows']:,} rows in batches of "
        f"{r['batch_size']} ({r['machine']}; Ray: {r['where']}, {r['cluster_cpus']:g} CPUs on "
        f"{r['cluster_nodes']} node(s))",
        "",
        "| system | seconds | rows/s | x plain loop |",
        "|---|---:|---:|---:|",
        f"| plain loop over the backend, one process (load {p['load_s']:.2f} s) "
        f"| {p['seconds']:.2f} | {p['rows_per_s']:,.0f} | 1.00 |",
        f"| plain loop, predict calls only | {p['seconds'] - p['load_s']:.2f} "
        f"| {p['scoring_rows_per_s']:,.0f} | {p['scoring_rows_per_s'] / p['rows_per_s']:.2f} |",
        f"| abserve batch-predict on Ray Data (whole job: input, actors, output) "
        f"| {d['seconds']:.2f} | {d['rows_per_s']:,.0f} | {r['ratio']:.2f} |",
        f"| the job's own count (execution only: the input already read) | {d['job_seconds']:.2f} "
        f"| {d['job_rows_per_s']:,.0f} | {d['job_rows_per_s'] / p['rows_per_s']:.2f} |",
        "",
        f"rows per node: {', '.join(f'{k[:8]} {v:,}' for k, v in d['nodes'].items())}",
    ])


def run_from_args(args: argparse.Namespace) -> int:
    r = run(args.config, args.version, args.rows, args.batch_size, args.address, args.actors,
            args.num_cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-batch.json").write_text(json.dumps(r, indent=2) + "\n")
    text = markdown(r)
    (out / "bench-batch.md").write_text(text + "\n")
    print(text)
    print(f"written: {out / 'bench-batch.md'}, {out / 'bench-batch.json'}")
    return 0
