"""`abserve soak`: steady fixed-rate load with a random fault every minute (issue 5).

It starts its own local Ray cluster (like `abserve bench`), its own redis-server
on a free loopback port and a v1 (scikit-learn) baseline + v2 (PyTorch, two
replicas) candidate application with a short cache TTL, then sends tagged load
at ``--rate`` for ``--duration`` seconds (benchmarks/faultload.py). Every
``--fault-interval`` seconds it injects the next fault of a shuffled cycle over
all kinds: the candidate's replicas killed, the candidate raising, the candidate
slow, Redis stopped and restarted, Redis frozen (SIGSTOP/SIGCONT), Serve's
controller killed. Every 10 s it samples the router replica's RSS and open file
descriptors (/proc/<pid>) and Redis' key count.

At the end it writes ``soak.md`` and ``soak.json`` (and every request in
``requests.jsonl``) to ``--out`` and exits non-zero when a criterion fails:
success rate >= 99.9 %, router RSS growth < 10 % and open-fd growth < 50 from the
reference sample (minute 5; a third of the run for runs under 10 minutes) to
the end, Redis keys bounded by what the TTL allows. Every process it starts is
stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.faultload import Event, FaultLoad, summarize, write_jsonl
from serve.local.pids import stop_pid
from serve.local.ports import free_port
from serve.local.private_ray import private_ray
from serve.local.redis_server import start_redis

__all__ = [
    "FAULTS", "SoakOptions", "evaluate", "key_bound", "render_markdown", "run_from_args",
]

log = logging.getLogger(__name__)

APP = "soak"
MODEL = "activity"
FAULTS = (
    "kill_candidate_replicas",
    "candidate_raises",
    "candidate_slow",
    "redis_restart",
    "redis_hang",
    "serve_controller_kill",
)
CANDIDATE_REPLICAS = 2
REPEAT_POOL = 16
SAMPLE_EVERY_S = 10.0


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 1800.0
    rate: float = 20.0
    fault_interval_s: float = 60.0
    ttl_s: int = 60
    repeat_share: float = 0.5
    seed: int = 0
    out: Path = Path("soak-results")
    registry: str | None = None
    ingress: str = "throughput"


@dataclass
class Sample:
    t: float
    rss_mb: float | None
    fds: int | None
    redis_keys: int | None


@dataclass
class Criterion:
    name: str
    limit: str
    measured: str
    held: bool


# ---------------------------------------------------------------- pure evaluation


def key_bound(rate: float, repeat_share: float, ttl_s: int, pool: int = REPEAT_POOL) -> int:
    """Most Redis keys the TTL allows: every unique input writes one key that lives
    ``ttl_s``, plus the repeated pool under both versions; 1.5x for Redis' lazy
    expiry (its active cycle keeps expired keys under about a quarter)."""
    return math.ceil(1.5 * rate * (1 - repeat_share) * ttl_s + 2 * pool)


def reference_time(duration_s: float) -> float:
    """Minute 5; a third of the run for runs shorter than 10 minutes (warm-up excluded)."""
    return 300.0 if duration_s >= 600 else duration_s / 3


def _nearest(samples: list[Sample], t: float, attr: str) -> Sample | None:
    usable = [s for s in samples if getattr(s, attr) is not None]
    return min(usable, key=lambda s: abs(s.t - t)) if usable else None


def evaluate(summary: dict[str, Any], samples: list[Sample], opts: SoakOptions,
             duration_s: float) -> list[Criterion]:
    """The soak's pass/fail rows from what it measured."""
    rows: list[Criterion] = []
    rate = summary["success_rate"]
    rows.append(Criterion(
        "success rate", ">= 99.9 %",
        f"{100 * rate:.3f} % ({summary['ok']} of {summary['requests']})",
        summary["requests"] > 0 and rate >= 0.999,
    ))
    ref_t = reference_time(duration_s)
    for attr, label, unit, check, limit in (
        ("rss_mb", "router RSS growth", "MB", lambda a, b: b < a * 1.10, "< 10 %"),
        ("fds", "router open fds growth", "", lambda a, b: b - a < 50, "< 50"),
    ):
        ref, end = _nearest(samples, ref_t, attr), _nearest(samples, duration_s, attr)
        if ref is None or end is None:
            rows.append(Criterion(label, limit, "no samples", False))
            continue
        a, b = getattr(ref, attr), getattr(end, attr)
        growth = f"{100 * (b - a) / a:+.1f} %" if attr == "rss_mb" else f"{b - a:+d}"
        rows.append(Criterion(
            label, limit,
            f"{a:g}{unit} at {ref.t:.0f} s -> {b:g}{unit} at {end.t:.0f} s ({growth})",
            bool(check(a, b)),
        ))
    keys = [s.redis_keys for s in samples if s.redis_keys is not None]
    bound = key_bound(opts.rate, opts.repeat_share, opts.ttl_s)
    rows.append(Criterion(
        "Redis keys bounded by TTL", f"<= {bound} (TTL {opts.ttl_s} s)",
        f"max {max(keys, default=0)}, last {keys[-1] if keys else 'n/a'} ({len(keys)} samples)",
        bool(keys) and max(keys) <= bound,
    ))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# abserve soak: {report['duration_s']:.0f} s at {report['rate']:g} req/s, "
        f"a fault every {report['fault_interval_s']:g} s",
        "",
        "| criterion | limit | measured | held |",
        "|---|---|---|---|",
    ]
    for c in report["criteria"]:
        lines.append(f"| {c['name']} | {c['limit']} | {c['measured']} | "
                     f"{'yes' if c['held'] else '**NO**'} |")
    lines += [
        "",
        f"Requests {s['requests']}, failed {s['failed']}, fallbacks {s['fallbacks']} "
        f"{s['fallback_reasons']}, cache {s['cache']}, p50 {s['p50_ms']:.1f} ms, "
        f"p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms.",
        "",
        "| t (s) | fault | detail |",
        "|---:|---|---|",
    ]
    for f in report["faults"]:
        detail = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("t", "event"))
        lines.append(f"| {f['t']:.1f} | {f['event']} | {detail} |")
    lines += ["", "| t (s) | router RSS MB | router fds | Redis keys |", "|---:|---:|---:|---:|"]
    for smp in report["samples"]:
        lines.append(f"| {smp['t']:.0f} | {smp['rss_mb']} | {smp['fds']} | {smp['redis_keys']} |")
    lines += ["", "| minute | requests | success rate | fallbacks | hit rate | p99 ms |",
              "|---:|---:|---:|---:|---:|---:|"]
    for i, w in enumerate(report["minutes"]):
        lines.append(f"| {i + 1} | {w['requests']} | {100 * w['success_rate']:.2f} % | "
                     f"{w['fallbacks']} | {100 * w['hit_rate']:.0f} % | {w['p99_ms']:.0f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- live parts


def _proc_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def _proc_fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


class _Redis:
    """The soak's own redis-server: stopped, started and frozen by PID."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> int:
        self.proc = start_redis(self.port, self.log)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.thaw()
            stop_pid(self.proc.pid)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def keys(self) -> int | None:
        if self.proc is None or self.frozen:
            return None
        import redis

        with contextlib.suppress(Exception):
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            try:
                return int(client.dbsize())
            finally:
                client.close()
        return None


def _config(registry: str, redis_url: str, port: int, state_dir: str, ttl_s: int) -> Any:
    from serve.config import parse_config

    return parse_config({
        "app_name": APP,
        "model": MODEL,
        "registry": registry,
        "models": [{"version": "v1", "num_cpus": 0.1},
                   {"version": "v2", "num_cpus": 0.05, "num_replicas": CANDIDATE_REPLICAS}],
        "experiment": {
            "name": "soak", "baseline": "v1", "timeout_ms": 5000,
            "arms": [{"version": "v1", "weight": 70},
                     {"version": "v2", "weight": 30, "timeout_ms": 300}],
            "breaker": {"failure_threshold": 5, "cooldown_s": 5},
        },
        "cache": {"redis_url": redis_url, "ttl_s": ttl_s, "timeout_ms": 50,
                  "retry_after_s": 0.5, "key_prefix": "soak"},
        "http": {"host": "127.0.0.1", "port": port},
        "router": {"num_cpus": 0.1},
        "state": {"dir": state_dir},
    })


class _Faults:
    """The fault kinds, each injected and undone in the calling thread."""

    def __init__(self, redis: _Redis) -> None:
        from serve.app import model_deployment_name

        self.redis = redis
        self.candidate = model_deployment_name(MODEL, "v2")

    def run(self, kind: str) -> dict[str, Any]:
        method: Callable[[], dict[str, Any]] = getattr(self, kind)
        return method()

    def kill_candidate_replicas(self) -> dict[str, Any]:
        from benchmarks.faults import deployment_running, kill_pids, replica_pids, wait_for

        pids = replica_pids(APP, self.candidate)
        kill_pids(pids)
        took = wait_for(lambda: deployment_running(APP, self.candidate, CANDIDATE_REPLICAS,
                                                   set(pids)), 60, 0.5, "candidate RUNNING")
        return {"pids": pids, "running_again_s": round(took, 1)}

    def _candidate_fault(self, **fault: float) -> dict[str, Any]:
        from benchmarks.faults import set_fault_all

        pids = set_fault_all(APP, self.candidate, **fault)
        try:
            time.sleep(15)
        finally:
            set_fault_all(APP, self.candidate)
        return {"pids": sorted(pids), "for_s": 15, **fault}

    def candidate_raises(self) -> dict[str, Any]:
        return self._candidate_fault(error_rate=1.0)

    def candidate_slow(self) -> dict[str, Any]:
        return self._candidate_fault(delay_s=3.0)

    def redis_restart(self) -> dict[str, Any]:
        old = self.redis.proc.pid if self.redis.proc else None
        self.redis.stop()
        try:
            time.sleep(10)
        finally:
            new = self.redis.start()
        return {"old_pid": old, "new_pid": new, "down_s": 10}

    def redis_hang(self) -> dict[str, Any]:
        pid = self.redis.proc.pid if self.redis.proc else None
        self.redis.freeze()
        try:
            time.sleep(8)
        finally:
            self.redis.thaw()
        return {"pid": pid, "frozen_s": 8}

    def serve_controller_kill(self) -> dict[str, Any]:
        from benchmarks.faults import controller_pid, kill_pids, wait_serve_answers

        pid = controller_pid()
        kill_pids([pid])
        back = wait_serve_answers(APP, 60)
        return {"pid": pid, "new_pid": controller_pid(), "serve_status_back_s": round(back, 1)}


def _registry(opts: SoakOptions, workdir: Path) -> str:
    from models.registry import Registry

    root = opts.registry or ("registry" if Path("registry").is_dir() else None)
    if root is not None:
        with contextlib.suppress(Exception):
            if {"v1", "v2"} <= set(Registry(root).versions(MODEL)):
                return str(Path(root).resolve())
        if opts.registry:
            raise RuntimeError(f"registry {root} lacks {MODEL} v1 and v2; run `abserve train`")
    from models.activity.train import train_all

    target = workdir / "registry"
    print(f"training {MODEL} v1 and v2 into {target} ...", flush=True)
    train_all(target, n_train=1500, n_test=300, quiet=True, versions=("v1", "v2"))
    return str(target)


def _deploy(config: Any, url: str, timeout_s: float = 300) -> None:
    """Deploy and wait until /ready answers 200 (every arm up)."""
    import httpx
    from ray import serve

    from benchmarks.faulty_model import FaultInjectingDeployment
    from serve.app import build_app

    app = build_app(config, model_deployment=FaultInjectingDeployment)  # the drills set faults
    serve.run(app, name=config.app_name, route_prefix="/")
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/ready not 200 after {timeout_s}s")
        time.sleep(0.5)


def _sampler(router_pid: int, redis: _Redis, load: FaultLoad, samples: list[Sample],
             stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append(Sample(round(load.elapsed(), 1), _proc_rss_mb(router_pid),
                              _proc_fds(router_pid), redis.keys()))
        stop.wait(SAMPLE_EVERY_S)


def run(opts: SoakOptions) -> dict[str, Any]:
    import httpx

    from benchmarks.faults import shutdown_serve

    opts.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory(prefix="abserve-soak-") as tmp:
        workdir = Path(tmp)
        registry = _registry(opts, workdir)
        os.environ.setdefault("ABSERVE_ADMIN_TOKEN", secrets.token_urlsafe(24))
        redis = _Redis(workdir)
        redis.start()
        try:
            port = free_port()
            mode: Any = opts.ingress
            with private_ray(mode, num_cpus=4, http_port=port) as cluster:
                cluster.shutdown_serve = shutdown_serve
                config = _config(registry, redis.url, port, str(workdir / "state"), opts.ttl_s)
                print(f"deploying {APP} (v1 70 %, v2 30 % x{CANDIDATE_REPLICAS}) ...",
                      flush=True)
                url = f"http://127.0.0.1:{port}"
                _deploy(config, url)
                router_pid = int(httpx.get(f"{url}/stats", timeout=30).json()["pid"])
                # The faults restart Serve's processes: the HAProxy of now is stopped too.
                cluster.remember_haproxy()
                report = _soak(opts, url, router_pid, redis, rng)
        finally:
            redis.stop()
    (opts.out / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    (opts.out / "soak.md").write_text(render_markdown(report))
    return report


def _soak(opts: SoakOptions, url: str, router_pid: int, redis: _Redis,
          rng: random.Random) -> dict[str, Any]:
    faults = _Faults(redis)
    load = FaultLoad(url, rate=opts.rate, duration_s=opts.duration_s,
                     repeat_share=opts.repeat_share, repeat_pool=REPEAT_POOL, seed=opts.seed,
                     tag_prefix="soak", timeout_s=10.0).start()
    samples: list[Sample] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(router_pid, redis, load, samples, stop),
                               daemon=True)
    sampler.start()
    cycle: list[str] = []
    next_at = opts.fault_interval_s
    print(f"soak: {opts.duration_s:.0f} s at {opts.rate:g} req/s, router pid {router_pid}",
          flush=True)
    try:
        while next_at < opts.duration_s - 5:
            time.sleep(max(0.0, next_at - load.elapsed()))
            if not cycle:
                cycle = list(FAULTS)
                rng.shuffle(cycle)
            kind = cycle.pop()
            started = load.elapsed()
            try:
                detail = faults.run(kind)
            except Exception as exc:  # noqa: BLE001 - recorded; the soak goes on
                detail = {"harness_error": repr(exc)[:200]}
            load.events.append(Event(round(started, 1), kind,
                                     detail | {"took_s": round(load.elapsed() - started, 1)}))
            print(f"  {started:7.1f} s  {kind}: {detail}", flush=True)
            next_at += opts.fault_interval_s
    finally:
        records = load.join(timeout=opts.duration_s + 120)
        time.sleep(0.5)
        samples.append(Sample(round(load.elapsed(), 1), _proc_rss_mb(router_pid),
                              _proc_fds(router_pid), redis.keys()))
        stop.set()
        sampler.join(timeout=15)
    write_jsonl(opts.out / "requests.jsonl", records, load.events)
    summary = summarize(records, window_s=60.0)
    duration = opts.duration_s
    criteria = evaluate(summary, samples, opts, duration)
    return {
        "duration_s": duration,
        "rate": opts.rate,
        "fault_interval_s": opts.fault_interval_s,
        "ttl_s": opts.ttl_s,
        "router_pid": router_pid,
        "criteria": [asdict(c) for c in criteria],
        "passed": all(c.held for c in criteria),
        "summary": {k: v for k, v in summary.items() if k != "windows"},
        "minutes": summary["windows"],
        "faults": [{"t": e.t, "event": e.name, **e.detail} for e in load.events],
        "samples": [asdict(s) for s in samples],
        "reference_t_s": reference_time(duration),
    }


def options_from_args(args: Any) -> SoakOptions:
    return SoakOptions(
        duration_s=float(args.duration), rate=float(args.rate),
        fault_interval_s=float(args.fault_interval), ttl_s=int(args.ttl),
        seed=int(args.seed), out=Path(args.out), registry=args.registry,
        ingress=str(args.ingress),
    )


def run_from_args(args: Any) -> int:
    report = run(options_from_args(args))
    print(render_markdown(report))
    print(f"written: {Path(args.out) / 'soak.md'}, soak.json, requests.jsonl")
    return 0 if report["passed"] else 1
