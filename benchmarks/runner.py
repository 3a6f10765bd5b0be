"""``abserve bench``: the naive server, plain Ray Serve and this platform, measured alike.

One run, one machine, one model (the registered v1 artifact), one set of
request bodies, one load generator (wrk + ``wrk/predict.lua``), in this order:

- (a)  the naive per-request FastAPI + uvicorn server (a subprocess);
- (f)  MLServer 1.7.1 + mlserver-sklearn, adaptive batching, its OIP REST
       route (a subprocess from a virtualenv of its own, ``benchmarks/mlserver.py``;
       its answers are checked against the artifact's before the load);
- (b)  plain Ray Serve: one batched deployment, its own ingress; also at
       concurrency 1 (``b1``), the reference for (e);
- (n)  the ceiling: plain Ray Serve doing no work (``benchmarks/noop_serve.py``:
       reads the body, answers a constant), one replica with (b)'s CPU share,
       (b)'s bodies and connections; context, not a target;
- (c)  the platform's full path, cache miss (every body unique), 90/10 A/B
       split between v1 (sklearn) and v2 (torch), fallback armed; plus an
       open-loop row (``c-open``) at half of (c)'s throughput, for latency;
- (d)  the full path, cache hit (a few repeated bodies);
- (e)  the full path at concurrency 1.

Ray is started once (``address="local"``) in the chosen ingress mode and
shared by (b)-(e) and (n); (b)'s and (n)'s applications are each deleted
before the next one is deployed. One server is loaded at a time: (a)'s uvicorn and MLServer are
stopped before (b) starts. (a), (b) and (f) serve the estimator's own
``predict_proba`` (``benchmarks/artifact.py``), never abserve's backend. Every
process the bench starts (uvicorn, MLServer, redis-server, the Ray instance
and the HAProxy it spawns) is stopped in ``finally`` blocks, by PID.
The targets are checked and reported, never asserted: a missed target is a
finding, so only a failure of the harness itself makes the exit status
non-zero, and so does an (f) whose answers differ from the artifact's (the
comparison would not be of the same model). An MLServer virtualenv that
cannot be built skips (f), with the reason in the report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.faults import HandleLoop, set_log_sample_all
from benchmarks.loadgen import LoadResult, open_loop, run_wrk, unique_bodies, write_bodies
from benchmarks.report import LOG_PAIRS, log_window, log_windows
from serve.local.pids import psutil_module, stop_pid
from serve.local.ports import free_port
from serve.local.private_ray import private_ray
from serve.local.redis_server import start_redis

__all__ = ["VARIANTS", "BenchOptions", "VariantResult", "run", "run_from_args"]

log = logging.getLogger("abserve.bench")

VARIANTS: dict[str, str] = {
    "a": "naive FastAPI + uvicorn, per-request predict (v1)",
    "f": "MLServer 1.7.1 + mlserver-sklearn, adaptive batching (64, 5 ms), "
         "inference in the HTTP process, OIP REST (v1)",
    "b": "plain Ray Serve, one batched deployment (v1)",
    "b1": "plain Ray Serve at concurrency 1 (reference for e)",
    "n": "plain Ray Serve, no-op: reads the body, returns a constant (one replica's ceiling)",
    "c": "abserve full path, cache miss, 90/10 v1/v2, fallback armed",
    "c-open": "abserve full path, cache miss, open-loop fixed rate",
    "d": "abserve full path, cache hit (repeated inputs)",
    "e": "abserve full path at concurrency 1, cache miss",
    "e-shadow": "as (e), with every request also shadowed to v2 (shadow share 100 %)",
}


def describe(name: str) -> str:
    """A variant's description; variant l's windows (c-off1, c-log1, ...) by pattern."""
    window = log_window(name)
    if window is None:
        return VARIANTS[name]
    variant, on, k = window
    what = ("logging every request, inputs included" if on
            else "the log switched off live (sample 0)")
    return f"as ({variant}), one deployment with the prediction log, window {k}: {what}"


SELECTABLE = ("a", "b", "c", "d", "e", "f", "n")  # the default selection
# On request only: l, the prediction log's cost. One more deployment of (c)-(e)'s app with
# the log on, then (c) and (e) each in alternating windows, the log switched live in the
# same processes: off, on, off, ..., on, off (report.log_windows; ABSERVE_BENCH_LOG_PAIRS
# on windows, default 2). Redeploying with the log on and off cannot resolve a 5 % cost: an A/A
# run, the log off in both deployments, read 0.91x.
EXTRA = ("l",)
MODEL = "activity"
APP = "abserve-bench"
MODEL_NUM_CPUS = 0.25  # the platform's default per model replica; (b) and (n) get the same
WRK_PREFIXES = ("wrk",)


@dataclass(frozen=True)
class BenchOptions:
    duration_s: float = 20.0
    warmup_s: float = 2.0
    connections: int = 32
    threads: int = 2
    ingress: str = "throughput"
    registry: str | None = None
    out: Path = Path("bench-results")
    variants: tuple[str, ...] = SELECTABLE
    short: bool = False
    open_loop_fraction: float = 0.5
    mlserver_venv: Path | None = None  # default: benchmarks.mlserver.default_venv()


@dataclass
class VariantResult:
    name: str
    description: str
    load: LoadResult
    cpu_pct: float
    cpu_by_process: dict[str, float]
    rss_mb: dict[str, float]
    notes: dict[str, Any] = field(default_factory=dict)
    # per label, the peak of its largest process (rss_mb sums a label's processes: two
    # router replicas are two processes, and the RSS target is per replica)
    process_rss_mb: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            **self.load.to_dict(),
            "cpu_pct": self.cpu_pct,
            "cpu_by_process": self.cpu_by_process,
            "rss_mb": self.rss_mb,
            "process_rss_mb": self.process_rss_mb,
            "notes": self.notes,
        }


# ---------------------------------------------------------------- processes


class ProcessGroup:
    """Labelled server processes: CPU seconds between two points, peak RSS between them."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        psutil = psutil_module()
        self._procs: dict[str, list[Any]] = {}
        for label, pids in groups.items():
            procs = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
            self._procs[label] = procs
        self._peak: dict[str, float] = {}
        self._peak_process: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pids(self) -> dict[str, list[int]]:
        return {label: [p.pid for p in procs] for label, procs in self._procs.items()}

    def cpu_seconds(self) -> dict[str, float]:
        psutil = psutil_module()
        out: dict[str, float] = {}
        for label, procs in self._procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            out[label] = total
        return out

    def rss_mb(self) -> dict[str, float]:
        return {label: sum(each) for label, each in self._rss_each_mb().items()}

    def _rss_each_mb(self) -> dict[str, list[float]]:
        psutil = psutil_module()
        out: dict[str, list[float]] = {}
        for label, procs in self._procs.items():
            each = []
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    each.append(p.memory_info().rss / 2**20)
            out[label] = each
        return out

    def _record_peaks(self) -> None:
        for label, each in self._rss_each_mb().items():
            self._peak[label] = max(self._peak.get(label, 0.0), sum(each))
            self._peak_process[label] = max(self._peak_process.get(label, 0.0), *each, 0.0)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self._record_peaks()

    def __enter__(self) -> ProcessGroup:
        self._peak, self._peak_process = {}, {}
        self._record_peaks()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record_peaks()

    @property
    def peak_rss_mb(self) -> dict[str, float]:
        """Per label, the peak of its processes' summed RSS."""
        return {k: round(v, 1) for k, v in self._peak.items()}

    @property
    def peak_process_rss_mb(self) -> dict[str, float]:
        """Per label, the peak RSS of its largest process."""
        return {k: round(v, 1) for k, v in self._peak_process.items()}


def _host_busy_s() -> float:
    """CPU seconds the host spent busy, all cores (steal, time the hypervisor took, excluded)."""
    t = psutil_module().cpu_times()
    not_busy = ("idle", "iowait", "steal", "guest", "guest_nice")  # guest is inside user
    return float(sum(t) - sum(getattr(t, f, 0.0) for f in not_busy))


def _all_cpu() -> dict[int, tuple[str, float]]:
    """Every process's (name, CPU seconds): to name whatever else loaded the host."""
    psutil = psutil_module()
    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is None:
            continue
        # The program's name only, never its arguments (they may carry anything).
        argv = list(p.info.get("cmdline") or [])
        if len(argv) > 1 and os.path.basename(argv[0]).startswith("python"):
            argv = argv[1:]  # name the script, not the interpreter
        prog = os.path.basename(argv[0].split(" ")[0]) if argv else p.info.get("name")
        out[p.pid] = (str(prog or "?")[:60], t.user + t.system)
    return out


def _others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
            mine: set[int], wall: float, top: int = 3) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = []
    for pid, (name, cpu) in after.items():
        if pid in mine or pid == os.getpid():
            continue
        used = cpu - before.get(pid, (name, 0.0))[1]
        if used > 0.02 * wall:
            deltas.append({"pid": pid, "cmd": name, "cpu_pct": round(100.0 * used / wall, 1)})
    return sorted(deltas, key=lambda d: -float(d["cpu_pct"]))[:top]


def serve_process_groups(
    app: str, extra: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """PIDs of ``app``'s replicas (one label per deployment) and of the HTTP ingress.

    Read from the GCS actor table (the state API needs the dashboard, which
    the bench does not start). ``proxy`` is Serve's proxy actor(s) plus their
    children: the HAProxy process in throughput mode.
    """
    import ray._private.state as ray_state

    psutil = psutil_module()
    groups: dict[str, list[int]] = {}
    proxy: list[int] = []
    for actor in ray_state.actors().values():
        if actor.get("State") != "ALIVE" or not actor.get("Pid"):
            continue
        cls = str(actor.get("ActorClassName", ""))
        pid = int(actor["Pid"])
        if cls.startswith(f"ServeReplica:{app}:"):
            groups.setdefault(cls.split(":", 2)[2], []).append(pid)
        elif cls in ("ProxyActor", "HAProxyManager"):
            proxy.append(pid)
            with contextlib.suppress(psutil.Error):
                proxy.extend(c.pid for c in psutil.Process(pid).children(recursive=True))
    if proxy:
        groups["proxy"] = sorted(set(proxy))
    groups.update(extra or {})
    return groups


# ---------------------------------------------------------------- helpers


def _wait_http(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s (last: {last!r})")


def _wait_predict(url: str, body: bytes, timeout_s: float) -> None:
    """Until one real prediction answers 200: the app is routable and its model loaded."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url, content=body, headers={"content-type": "application/json"},
                           timeout=10)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"POST {url} did not answer 200 within {timeout_s:.0f}s (last: {last!r})")


def _get_json(url: str) -> dict[str, Any]:
    import httpx

    try:
        r = httpx.get(url, timeout=5)
        return dict(r.json()) if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def _batch_note(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    calls = after.get("calls", 0) - before.get("calls", 0)
    rows = after.get("rows", 0) - before.get("rows", 0)
    return {"backend_calls": calls, "rows": rows,
            "mean_batch_rows": round(rows / calls, 2) if calls else None}


def _router_note(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Cache hit rate and arm split over the measured run, from the router's /stats."""
    note: dict[str, Any] = {}
    cb, ca = before.get("cache", {}), after.get("cache", {})
    hits = ca.get("hits", 0) - cb.get("hits", 0)
    misses = ca.get("misses", 0) - cb.get("misses", 0)
    bypasses = ca.get("bypasses", 0) - cb.get("bypasses", 0)
    if hits + misses + bypasses:
        note["cache"] = {"hits": hits, "misses": misses, "bypasses": bypasses,
                         "hit_rate": round(hits / (hits + misses + bypasses), 4)}
    arms: dict[str, Any] = {}
    for version, s in after.get("arms", {}).items():
        b = before.get("arms", {}).get(version, {})
        arms[version] = {k: s[k] - b.get(k, 0) for k in s if isinstance(s[k], int | float)}
    if arms:
        note["arms"] = arms
    return note


@contextlib.contextmanager
def _naive_server(registry: str, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.naive_server", "--registry", registry,
             "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 120)
        yield proc
    finally:
        stop_pid(proc.pid, timeout_s=15)


def _registry(opts: BenchOptions, workdir: Path) -> str:
    from models.registry import Registry

    if opts.registry:
        reg = Registry(opts.registry)
        missing = [v for v in ("v1", "v2") if v not in reg.versions(MODEL)]
        if missing:
            raise RuntimeError(f"registry {opts.registry} lacks {MODEL} {missing}; "
                               "run `abserve train --registry DIR` first")
        return str(Path(opts.registry).resolve())
    from models.activity.train import train_all

    root = workdir / "registry"
    print(f"training {MODEL} v1 (sklearn) and v2 (torch) into {root} ...", flush=True)
    train_all(root, n_train=1500, n_test=300, quiet=True, versions=("v1", "v2"))
    return str(root)


def _set_shadows(base: str, shadows: list[dict[str, Any]]) -> None:
    import httpx

    token = os.environ["ABSERVE_ADMIN_TOKEN"]
    r = httpx.put(f"{base}/admin/shadows", json={"shadows": shadows},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    time.sleep(1.5)  # every router replica picks the change up within one poll


def platform_config(registry: str, redis_url: str, port: int, state_dir: str,
                    log_location: str | None = None) -> Any:
    """(c)-(e): v1 baseline 90 %, v2 10 %, Redis cache, default breaker and timeouts;
    ``log_location``: the prediction log on, written there (variant l).

    ``ABSERVE_BENCH_SET`` (JSON) is merged in for side-by-side trials: a section's
    dict updates that section; ``"models": [{...}]`` updates every version.
    """
    from serve.config import parse_config

    raw: dict[str, Any] = {
        "app_name": APP,
        "model": MODEL,
        "registry": registry,
        "models": [{"version": "v1", "num_cpus": MODEL_NUM_CPUS},
                   {"version": "v2", "num_cpus": MODEL_NUM_CPUS}],
        "experiment": {"name": "bench", "baseline": "v1",
                       "arms": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]},
        "cache": {"enabled": True, "redis_url": redis_url},
        "http": {"host": "127.0.0.1", "port": port},
        "state": {"dir": state_dir},  # a fresh experiment every run
    }
    if log_location is not None:
        raw["log"] = {"enabled": True, "location": log_location}
    for section, values in json.loads(os.environ.get("ABSERVE_BENCH_SET", "{}")).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        elif section == "models":  # applied to every model version
            for patch in values:
                for m in raw["models"]:
                    m.update(patch)
        else:
            raw[section] = values
    return parse_config(raw)


# ---------------------------------------------------------------- the run


class Bench:
    def __init__(self, opts: BenchOptions, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.results: dict[str, VariantResult] = {}
        # Variants selected but not measured: {"status": "skipped" | "failed", "reason": ...}.
        self.not_run: dict[str, dict[str, str]] = {}
        self.salt = 0
        self.unique_file = write_bodies(workdir / "bodies-unique.txt", unique=True)
        # (d)'s few repeated inputs: the warm-up caches each of them under both arms.
        self.repeat_file = write_bodies(workdir / "bodies-repeat.txt", n=16, unique=False)
        self.probe_body = self.repeat_file.read_text().splitlines()[0].encode()
        # (f)'s bodies: the same windows and placeholders, as OIP requests.
        self.oip_file = write_bodies(workdir / "bodies-unique-oip.txt", unique=True, fmt="oip")
        self.handles: HandleLoop | None = None
        self.mlserver_ready_s: float | None = None  # building or checking its virtualenv

    def _stats(self, app: str, deployment: str) -> dict[str, Any]:
        return self.handles.stats(app, deployment) if self.handles else {}

    def _next_salt(self) -> int:
        self.salt += 1
        return self.salt

    def _wrk(self, url: str, *, unique: bool, connections: int, duration_s: float,
             bodies: Path | None = None) -> LoadResult:
        return run_wrk(
            url, bodies or (self.unique_file if unique else self.repeat_file), unique=unique,
            salt=self._next_salt(), connections=connections,
            threads=self.opts.threads if connections > 1 else 1, duration_s=duration_s,
        )

    def measure(
        self,
        name: str,
        groups: Callable[[], dict[str, list[int]]],
        load: Callable[[float], LoadResult],
        *,
        warmup: bool = True,
        notes: Callable[[], dict[str, Any]] | None = None,
        after: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> VariantResult:
        print(f"[{name}] {describe(name)}", flush=True)
        if warmup and self.opts.warmup_s > 0:
            load(self.opts.warmup_s)
        procs = ProcessGroup(groups())
        before = notes() if notes else {}
        with procs:
            all0 = _all_cpu()
            host0 = _host_busy_s()
            cpu0 = procs.cpu_seconds()
            t0 = time.monotonic()
            result = load(self.opts.duration_s)
            wall = time.monotonic() - t0
            cpu1 = procs.cpu_seconds()
            host1 = _host_busy_s()
            all1 = _all_cpu()
        cpu = {k: round(100.0 * (cpu1[k] - cpu0.get(k, 0.0)) / wall, 1) for k in cpu1}
        res = VariantResult(
            name=name,
            description=describe(name),
            load=result,
            cpu_pct=round(sum(cpu.values()), 1),
            cpu_by_process=cpu,
            rss_mb=procs.peak_rss_mb,
            notes=after(before) if after else {},
            process_rss_mb=procs.peak_process_rss_mb,
        )
        res.notes["pids"] = procs.pids()
        # All busy CPU on the host; far above server + load generator means other load.
        res.notes["host_cpu_pct"] = round(100.0 * (host1 - host0) / wall, 1)
        mine = {pid for pids in procs.pids().values() for pid in pids}
        res.notes["other_processes"] = [
            o for o in _others(all0, all1, mine, wall) if not o["cmd"].startswith(WRK_PREFIXES)
        ]
        self.results[name] = res
        print(f"    {result.rps:8.1f} req/s  p50 {result.p50_ms:6.2f} ms  "
              f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  cpu {res.cpu_pct:.0f}%",
              flush=True)
        return res

    # -- (a)

    def run_naive(self, registry: str) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/predict"
        with _naive_server(registry, port, self.workdir / "naive.log") as proc:
            psutil = psutil_module()
            pids = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            self.measure(
                "a", lambda: {"naive-uvicorn": pids},
                lambda d: self._wrk(url, unique=True, connections=self.opts.connections,
                                    duration_s=d),
            )

    # -- (f)

    def build_mlserver(self) -> Path | None:
        """MLServer's virtualenv (built now, before anything is measured), or None: skipped."""
        from benchmarks import mlserver

        started = time.monotonic()
        try:
            venv = mlserver.ensure_venv(self.opts.mlserver_venv)  # its log beside it
        except mlserver.MLServerUnavailable as exc:
            self.not_run["f"] = {"status": "skipped", "reason": str(exc)}
            print(f"[f] skipped: {exc}", flush=True)
            return None
        self.mlserver_ready_s = round(time.monotonic() - started, 1)
        return venv

    def run_mlserver(self, registry: str, venv: Path) -> None:
        from benchmarks import mlserver
        from benchmarks.artifact import reference_artifact

        artifact, _ = reference_artifact(registry, MODEL, "v1")
        log_path = self.opts.out / "mlserver.log"  # kept: it explains a failed (f)
        try:
            with mlserver.start(venv, artifact, self.workdir, log_path) as server:
                check = mlserver.check_answers(server.infer_url, artifact)
                info = {"answer_check": check,
                        "mlserver": {**mlserver.venv_info(venv), "settings": server.settings,
                                     "venv_ready_s": self.mlserver_ready_s,
                                     "route": server.route}}
                self.measure(
                    "f", lambda: {"mlserver": server.pids()},
                    lambda d: self._wrk(server.infer_url, unique=True, bodies=self.oip_file,
                                        connections=self.opts.connections, duration_s=d),
                    after=lambda _: dict(info),
                )
        except mlserver.MLServerFailed as exc:
            self.not_run["f"] = {"status": "failed", "reason": str(exc)}
            print(f"[f] FAILED: {exc}", flush=True)

    # -- (b)

    def run_plain(self, registry: str, http_port: int) -> None:
        from ray import serve

        from benchmarks.plain_serve import PLAIN_APP, PLAIN_DEPLOYMENT, plain_app

        url = f"http://127.0.0.1:{http_port}/predict"
        serve.run(plain_app(registry, MODEL_NUM_CPUS), name=PLAIN_APP, route_prefix="/")
        try:
            _wait_predict(url, self.probe_body, 120)
            stats = lambda: self._stats(PLAIN_APP, PLAIN_DEPLOYMENT)  # noqa: E731
            batch = lambda b: _batch_note(b, stats())  # noqa: E731
            groups = lambda: serve_process_groups(PLAIN_APP)  # noqa: E731
            self.measure(
                "b", groups,
                lambda d: self._wrk(url, unique=True, connections=self.opts.connections,
                                    duration_s=d),
                notes=stats, after=batch,
            )
            self.measure(
                "b1", groups,
                lambda d: self._wrk(url, unique=True, connections=1, duration_s=d),
                notes=stats, after=batch,
            )
        finally:
            serve.delete(PLAIN_APP)

    # -- (n)

    def run_noop(self, http_port: int) -> None:
        from ray import serve

        from benchmarks.noop_serve import NOOP_APP, noop_app

        url = f"http://127.0.0.1:{http_port}/predict"
        serve.run(noop_app(MODEL_NUM_CPUS), name=NOOP_APP, route_prefix="/")
        try:
            _wait_predict(url, self.probe_body, 120)
            self.measure(
                "n", lambda: serve_process_groups(NOOP_APP),
                lambda d: self._wrk(url, unique=True, connections=self.opts.connections,
                                    duration_s=d),
            )
        finally:
            serve.delete(NOOP_APP)

    # -- (c), (d), (e)

    def _log_windows(
        self, variant: str, flush_interval_s: float, groups: Callable[[], dict[str, list[int]]],
        load: Callable[[float], LoadResult], notes: Callable[[], dict[str, Any]],
        after: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Variant l: ``variant`` in report.log_windows order on the deployed app, its
        prediction log switched live on every router replica (``set_log_sample``: 100 %
        on, 0 % off; off, ``record`` returns after its sampling hash). Before an off
        window, one flush interval and a second more, so that the on window's rows are
        written before it starts, not during it. ``ABSERVE_BENCH_LOG_ON_PERCENT`` (default
        100) is the on windows' share: 0 makes the run an A/A, the same switching with the
        log off throughout, which shows the windows' own noise; ``ABSERVE_BENCH_LOG_PAIRS``
        the number of on windows (default 2; each with an off window after it)."""
        assert self.handles is not None, "variant l runs with the bench's Ray cluster"
        on_percent = float(os.environ.get("ABSERVE_BENCH_LOG_ON_PERCENT", "100"))
        windows = log_windows(int(os.environ.get("ABSERVE_BENCH_LOG_PAIRS", LOG_PAIRS)))
        for window in windows:
            on = window.startswith("log")
            percent = on_percent if on else 0.0
            pids = set_log_sample_all(APP, percent, loop=self.handles)
            if not pids:
                raise RuntimeError("variant l: the router replicas have no prediction log")
            if not on and window != windows[0]:
                time.sleep(flush_interval_s + 1.0)
            res = self.measure(f"{variant}-{window}", groups, load, notes=notes, after=after)
            res.notes["log_sample_percent"] = percent
            res.notes["log_switched_pids"] = sorted(pids)

    def run_platform(self, registry: str, http_port: int, redis_url: str,
                     redis_pid: int, log_location: str | None = None) -> None:
        """``log_location``: deploy with the prediction log on there and measure only
        variant l's windows of (c) and (e) (``_log_windows``)."""
        from ray import serve

        from serve.app import ROUTER_DEPLOYMENT, build_app, model_deployment_name

        config = platform_config(registry, redis_url, http_port, str(self.workdir / "state"),
                                 log_location)
        base = f"http://127.0.0.1:{http_port}"
        url = f"{base}/predict"
        serve.run(build_app(config), name=APP, route_prefix="/")
        _wait_http(f"{base}/ready", 180)
        _wait_predict(url, self.probe_body, 60)
        models = {v: model_deployment_name(MODEL, v) for v in ("v1", "v2")}
        groups = lambda: serve_process_groups(APP, {"redis": [redis_pid]})  # noqa: E731

        def notes() -> dict[str, Any]:
            return {"router": _get_json(f"{base}/stats"),
                    **{v: self._stats(APP, d) for v, d in models.items()}}

        def after(before: dict[str, Any]) -> dict[str, Any]:
            now = notes()
            out = _router_note(before.get("router", {}), now.get("router", {}))
            out["batching"] = {v: _batch_note(before.get(v, {}), now.get(v, {})) for v in models}
            out["router_deployment"] = ROUTER_DEPLOYMENT
            return out

        selected = set(self.opts.variants)
        conns = self.opts.connections
        if log_location is not None:
            for variant, c in (("c", conns), ("e", 1)):
                if variant in selected:
                    self._log_windows(
                        variant, config.log.flush_interval_s, groups,
                        lambda d, c=c: self._wrk(url, unique=True, connections=c, duration_s=d),
                        notes, after,
                    )
            return
        if "c" in selected:
            c = self.measure(
                "c", groups,
                lambda d: self._wrk(url, unique=True, connections=conns, duration_s=d),
                notes=notes, after=after,
            )
            rate = max(1.0, round(c.load.rps * self.opts.open_loop_fraction))
            self.measure(
                "c-open", groups,
                lambda d: open_loop(
                    url, unique_bodies(self.unique_file, int(rate * d) + 1, self._next_salt()),
                    rate=rate, duration_s=d,
                ),
                warmup=False, notes=notes, after=after,
            )
        if "d" in selected:
            self.measure(
                "d", groups,
                lambda d: self._wrk(url, unique=False, connections=conns, duration_s=d),
                notes=notes, after=after,
            )
        if "e" in selected:
            self.measure(
                "e", groups,
                lambda d: self._wrk(url, unique=True, connections=1, duration_s=d),
                notes=notes, after=after,
            )
            # Shadow every request to v2 (the primary is v1 for 90 % of them) and measure
            # the same path again: the client must not wait for the shadow.
            _set_shadows(base, [{"version": "v2", "percent": 100}])
            try:
                self.measure(
                    "e-shadow", groups,
                    lambda d: self._wrk(url, unique=True, connections=1, duration_s=d),
                    notes=notes, after=after,
                )
            finally:
                _set_shadows(base, [])


def run(opts: BenchOptions) -> dict[str, Any]:
    """Run the selected variants; write bench.md, bench.json, bench.png; return the report."""
    from benchmarks import report

    unknown = sorted(set(opts.variants) - set(SELECTABLE) - set(EXTRA))
    if unknown:
        raise ValueError(
            f"unknown variants {unknown}; choose from {','.join(SELECTABLE + EXTRA)}")
    opts.out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="abserve-bench-") as tmp:
        workdir = Path(tmp)
        bench = Bench(opts, workdir)
        mlserver_venv = bench.build_mlserver() if "f" in opts.variants else None
        registry = _registry(opts, workdir)
        # The (e-shadow) variant turns shadowing on through the admin API.
        os.environ.setdefault("ABSERVE_ADMIN_TOKEN", secrets.token_urlsafe(24))
        redis_proc: subprocess.Popen[bytes] | None = None
        try:
            with contextlib.ExitStack() as ray_running:
                http_port = free_port()
                if set(opts.variants) & {"b", "c", "d", "e", "n"}:
                    mode: Any = opts.ingress
                    cluster = ray_running.enter_context(
                        private_ray(mode, num_cpus=cores * 2, http_port=http_port))
                    handles = bench.handles = HandleLoop()
                    cluster.shutdown_serve = handles.shutdown_serve_and_close
                if "a" in opts.variants:
                    bench.run_naive(registry)
                if mlserver_venv is not None:
                    bench.run_mlserver(registry, mlserver_venv)
                if "b" in opts.variants:
                    bench.run_plain(registry, http_port)
                if "n" in opts.variants:
                    bench.run_noop(http_port)
                if set(opts.variants) & {"c", "d", "e"}:
                    redis_port = free_port()
                    redis_proc = start_redis(redis_port, workdir / "redis.log")
                    bench.run_platform(registry, http_port, f"redis://127.0.0.1:{redis_port}/0",
                                       redis_proc.pid)
                    if "l" in opts.variants:
                        bench.run_platform(registry, http_port,
                                           f"redis://127.0.0.1:{redis_port}/0", redis_proc.pid,
                                           log_location=str(workdir / "log"))
        finally:
            if redis_proc is not None:
                stop_pid(redis_proc.pid)
    machine = report.machine_info(opts, cores)
    data = report.build(bench.results, opts, machine, wall_s=time.time() - started,
                        not_run=bench.not_run)
    report.write_all(data, opts.out)
    return data


def options_from_args(args: Any) -> BenchOptions:
    short = bool(getattr(args, "short", False))
    variants = tuple(v.strip() for v in str(args.variants).split(",") if v.strip())
    return BenchOptions(
        duration_s=3.0 if short else float(args.duration),
        warmup_s=1.0 if short else 2.0,
        connections=int(args.connections),
        ingress=str(args.ingress),
        registry=args.registry,
        out=Path(args.out),
        variants=variants,
        short=short,
        mlserver_venv=Path(args.mlserver_venv) if getattr(args, "mlserver_venv", None) else None,
    )


def run_from_args(args: Any) -> int:
    """``abserve bench``'s entry: print the markdown table; exit 0 even when a target is missed.

    Exit 1 when a variant failed (MLServer's answers were not the artifact's, or it
    never got ready), after the report is written.
    """
    from benchmarks import report

    opts = options_from_args(args)
    data = run(opts)
    print()
    print(report.markdown(data))
    print(f"wrote {opts.out / 'bench.md'}, {opts.out / 'bench.json'}, {opts.out / 'bench.png'}")
    failed = {k: v for k, v in data.get("not_run", {}).items() if v["status"] == "failed"}
    for name, v in failed.items():
        print(f"variant ({name}) FAILED: {v['reason']}", file=sys.stderr)
    return 1 if failed else 0
