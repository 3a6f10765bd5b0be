"""Where the control plane stops scaling: the experiment controller, the single writer, under
many router replicas' syncs and a stream of feedback labels.

    .venv/bin/python -m benchmarks.control_plane [--seconds 8] [--registry DIR]

Deploys abserve's experiment controller on a local Ray (throughput ingress mode, as
``abserve bench`` runs; the (c) config's experiment: v1 90 %, v2 10 %) and calls it from this
driver through its Serve handle, with the typed client the router replicas use
(router/controlplane/client.py), as R router replicas would:

- syncs of idle routers (counters only), at fixed rates: R routers polling every
  ``state.poll_interval_s`` send R / interval syncs a second;
- syncs that carry served predictions, S rows each (a router serving S / interval
  requests a second), at fixed rates;
- feedback labels, one call each, for predictions the syncs delivered;
- each also at saturation (many calls in flight): the most the one controller answers.

It reads the controller replica's CPU time as the bench does (user + system of its
process), so the figures include Serve's cost of each call. The driver runs on the same
cores: at saturation it competes with the controller, and the controller's CPU column
says how close to a whole core it got. Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FakeRouter", "Result", "main"]

APP = "cpbench"
CONTROLLER = "controller"


class FakeRouter:
    """One router replica's reports: cumulative counters for v1 and v2 (90/10), latencies
    drawn from a log-normal around 10 ms, and the predictions served since the last one."""

    def __init__(self, index: int, seed: int) -> None:
        from router.dataplane.measures import ArmMetrics

        self.replica_id = f"bench-router-{index}"
        self.metrics = {"v1": ArmMetrics(), "v2": ArmMetrics()}
        self.rng = random.Random(seed * 100_003 + index)
        self.n = 0

    def report(self, rows: int) -> tuple[Any, list[str]]:
        from router.controlplane.messages import SyncReport

        served: list[tuple[str, str, Any]] = []
        for _ in range(rows):
            version = "v1" if self.rng.random() < 0.9 else "v2"
            label = self.rng.randrange(6)
            m = self.metrics[version]
            m.record(self.rng.lognormvariate(2.3, 0.4))
            m.record_labels([label])
            self.n += 1
            served.append((f"{self.replica_id}-{self.n}", version, label))
        report = SyncReport(
            metrics={v: m.to_dict() for v, m in self.metrics.items() if m.requests},
            shadows={}, served=served,
        )
        return report, [rid for rid, _, _ in served]


@dataclass(frozen=True)
class Result:
    what: str
    offered: str  # the rate asked for, or "saturation (N in flight)"
    calls_per_s: float
    rows_per_s: float
    cpu_pct: float  # the controller replica's CPU, 100 = one core
    cpu_ms_per_call: float
    p50_ms: float
    p99_ms: float


async def _drive(call: Any, *, rate: float | None, in_flight: int, seconds: float) -> tuple[
        int, list[float], float]:
    """Issue ``call()`` at ``rate`` a second (None: as fast as ``in_flight`` calls allow)
    for ``seconds``; the calls made, their latencies (ms) and the wall time."""
    latencies: list[float] = []
    sem = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t = time.perf_counter()
        try:
            await call()
            latencies.append((time.perf_counter() - t) * 1000.0)
        finally:
            sem.release()

    t0 = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - t0 < seconds:
        if rate is not None:
            due = t0 + n / rate
            if due > now:
                await asyncio.sleep(due - now)
        await sem.acquire()
        task = asyncio.get_running_loop().create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)
    return n, latencies, time.perf_counter() - t0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _measure(what: str, offered: str, call: Any, rows_per_call: int, pid: int,
                   seconds: float, rate: float | None, in_flight: int) -> Result:
    from benchmarks.runner import ProcessGroup

    group = ProcessGroup({"controller": [pid]})
    await _drive(call, rate=rate, in_flight=in_flight, seconds=min(1.0, seconds))  # warm-up
    cpu0 = group.cpu_seconds()["controller"]
    n, latencies, wall = await _drive(call, rate=rate, in_flight=in_flight, seconds=seconds)
    cpu = group.cpu_seconds()["controller"] - cpu0
    return Result(what, offered, n / wall, n * rows_per_call / wall, cpu / wall * 100.0,
                  cpu / max(n, 1) * 1000.0, _pct(latencies, 0.5), _pct(latencies, 0.99))


async def _run(config: Any, seconds: float, poll_interval_s: float) -> list[Result]:
    from ray import serve

    from benchmarks.faults import replica_pids
    from router.controlplane.client import ControlClient
    from router.controlplane.controller import ExperimentController
    from router.controlplane.experiment import Declaration
    from serve.app import CONTROLLER_MAX_ONGOING, CONTROLLER_NUM_CPUS

    app = ExperimentController.options(  # type: ignore[attr-defined]
        name=CONTROLLER, user_config=Declaration.of(config).to_user_config(), num_replicas=1,
        max_ongoing_requests=CONTROLLER_MAX_ONGOING,
        ray_actor_options={"num_cpus": CONTROLLER_NUM_CPUS},
    ).bind(config.model_dump(mode="json"), None)
    handle = serve.run(app, name=APP, route_prefix=None)
    (pid,) = replica_pids(APP, CONTROLLER)
    control = ControlClient(handle)
    await control.get_state()

    routers = [FakeRouter(i, seed=1) for i in range(1000)]
    turn = {"i": 0}
    delivered: list[str] = []

    def next_router() -> FakeRouter:
        turn["i"] = (turn["i"] + 1) % len(routers)
        return routers[turn["i"]]

    def syncs(rows: int) -> Any:
        async def call() -> None:
            router = next_router()
            report, ids = router.report(rows)
            await control.sync(router.replica_id, report)
            delivered.extend(ids)
        return call

    results: list[Result] = []
    per_router = 1.0 / poll_interval_s
    for n_routers in (10, 100, 500):
        rate = n_routers * per_router
        results.append(await _measure(
            "sync, idle router (counters only)",
            f"{rate:.0f}/s ({n_routers} routers)", syncs(0), 0, pid, seconds, rate,
            in_flight=64))
    results.append(await _measure("sync, idle router (counters only)", "saturation (32 in flight)",
                                  syncs(0), 0, pid, seconds, None, in_flight=32))
    rows = int(1000 * poll_interval_s)  # a router at 1,000 req/s
    for n_routers in (2, 10, 20):
        rate = n_routers * per_router
        results.append(await _measure(
            f"sync with {rows} served rows", f"{rate:.0f}/s ({n_routers} routers at 1,000 req/s)",
            syncs(rows), rows, pid, seconds, rate, in_flight=64))
    results.append(await _measure(f"sync with {rows} served rows", "saturation (8 in flight)",
                                  syncs(rows), rows, pid, seconds, None, in_flight=8))

    labels = iter(delivered[::-1])  # the newest: the ledger keeps feedback.max_entries

    async def feedback() -> None:
        await control.record_feedback(next(labels), 1)

    for rate in (100.0, 500.0):
        results.append(await _measure("feedback label", f"{rate:.0f}/s", feedback, 1, pid,
                                      seconds, rate, in_flight=64))
    results.append(await _measure("feedback label", "saturation (32 in flight)", feedback, 1,
                                  pid, seconds, None, in_flight=32))
    await serve.shutdown_async()  # on the loop the handle's router runs on
    return results


def _table(results: list[Result]) -> str:
    lines = ["| call | offered | calls/s | rows/s | controller CPU % | CPU ms/call | p50 ms "
             "| p99 ms |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.what} | {r.offered} | {r.calls_per_s:.0f} | {r.rows_per_s:.0f} | "
                     f"{r.cpu_pct:.0f} | {r.cpu_ms_per_call:.3f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--registry", help="registry with activity v1, v2 (default: train one)")
    args = p.parse_args(argv)

    import os

    from benchmarks.artifact import small_registry
    from benchmarks.runner import platform_config
    from serve.local import free_port, private_ray

    with tempfile.TemporaryDirectory(prefix="abserve-cp-") as tmp:
        registry = small_registry(args.registry, tmp)
        config = platform_config(registry, "redis://127.0.0.1:1", free_port(),
                                 str(Path(tmp) / "state"))
        with private_ray("throughput", num_cpus=4, http_port=free_port()) as cluster:
            cluster.shutdown_serve = None  # _run shuts Serve down on its handle's loop
            results = asyncio.run(_run(config, args.seconds, config.state.poll_interval_s))
    print(f"experiment controller, {args.seconds:g} s per line; {os.cpu_count()} cores; "
          f"routers poll every {config.state.poll_interval_s:g} s")
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
