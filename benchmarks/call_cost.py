"""What one call to a model replica costs: the replica's CPU per call and the latency.

    .venv/bin/python -m benchmarks.call_cost [--seconds 8] [--registry DIR]

Starts a local Ray in the throughput ingress mode (as ``abserve bench`` does),
deploys a no-op Serve deployment (the floor: Serve's own cost of a call) and
the platform's model deployment for v1 (scikit-learn) and v2 (PyTorch), and
calls each one call at a time from this driver with batches of 1 and 14 rows,
reading the replica's CPU time as the bench does. It explains ``abserve bench`` (c):
the number of calls, more than the number of rows, sets the model side's CPU.
Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CallCost", "measure"]


@dataclass(frozen=True)
class CallCost:
    calls_per_s: float
    cpu_ms_per_call: float  # the replica's user + system CPU per call
    latency_ms: float  # one call at a time, as the driver sees it


async def measure(handle: Any, pid: int, batch: np.ndarray, seconds: float) -> CallCost:
    """Call ``handle.predict`` one call at a time for ``seconds``; ``pid`` is its replica."""
    from benchmarks.runner import ProcessGroup

    replica = ProcessGroup({"replica": [pid]})  # CPU seconds as the bench reads them
    predict = handle.options(method_name="predict")
    for _ in range(10):  # warm-up
        await predict.remote(batch)
    cpu0, t0, n = replica.cpu_seconds()["replica"], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        await predict.remote(batch)
        n += 1
    wall = time.perf_counter() - t0
    cpu = replica.cpu_seconds()["replica"] - cpu0
    return CallCost(n / wall, cpu / n * 1000.0, wall / n * 1000.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="per deployment and batch size")
    p.add_argument("--registry", help="registry with activity v1, v2 (default: train one)")
    args = p.parse_args(argv)

    from benchmarks.artifact import small_registry
    from serve.local import free_port, private_ray

    with tempfile.TemporaryDirectory(prefix="abserve-callcost-") as tmp:
        registry = small_registry(args.registry, tmp)
        with private_ray("throughput", num_cpus=4, http_port=free_port()) as cluster:
            cluster.shutdown_serve = None  # _run shuts Serve down on its handles' loop
            asyncio.run(_run(registry, args.seconds))
    return 0


async def _run(registry: str, seconds: float) -> None:
    from ray import serve

    from deployments.model import ModelDeployment
    from models.activity.data import make_windows

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class NoOp:
        async def predict(self, batch: np.ndarray) -> np.ndarray:
            return batch[:, 0, :]

        def pid(self) -> int:
            return os.getpid()

    app = NoOp.bind()  # type: ignore[attr-defined]
    noop = serve.run(app, name="callcost-noop", route_prefix=None)
    targets = [("no-op Serve deployment", noop, await noop.pid.remote())]
    for version, framework in (("v1", "scikit-learn"), ("v2", "PyTorch")):
        app = ModelDeployment.options(  # type: ignore[attr-defined]
            name=f"model-{version}").bind(registry, "activity", {"version": version})
        handle = serve.run(app, name=f"callcost-{version}", route_prefix=None)
        pid = (await handle.stats.remote())["pid"]
        targets.append((f"model {version} ({framework})", handle, pid))
    xs = make_windows(14, seed=1)[0].astype(np.float32)
    print(f"one call at a time, {seconds:g} s each; {os.cpu_count()} cores")
    print("| deployment | rows | calls/s | replica CPU ms/call | latency ms |")
    print("|---|---:|---:|---:|---:|")
    for name, handle, pid in targets:
        for rows in (1, 14):
            cost = await measure(handle, pid, xs[:rows], seconds)
            print(f"| {name} | {rows} | {cost.calls_per_s:.0f} | "
                  f"{cost.cpu_ms_per_call:.2f} | {cost.latency_ms:.2f} |", flush=True)
    await serve.shutdown_async()  # on the loop the handles' routers run on


if __name__ == "__main__":
    raise SystemExit(main())
