"""Real components: one local Ray instance per session, a real redis-server on a
free loopback port (never 6379, Ray's GCS default), real model files.

Like Ray's own ``serve_instance`` fixture, the cluster is shared by the whole
session; each module deploys its application and deletes it afterwards.
Every process started here is stopped by PID (serve/local/: the same code the
CLI and the benchmarks use, Serve's HAProxy included).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.http.auth import TOKEN_ENV
from serve.config import HttpConfig
from serve.local import free_port, free_ports, private_ray, start_redis, stop_pid

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


APP = "itest"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes] | None
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None

    def start(self) -> None:
        self.proc = start_redis(self.port, self.log)

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; scripts/setup.sh installs it")
    port = free_port()
    assert port != 6379
    server = RedisServer(port, None, tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo versions, trained for real (smaller sets than `abserve train`): activity
    v1-v3 (plus the user's v4 and the constant v9) and the sales forecast v1-v2 (a
    regression on tabular records, ~7 s), so several models can run side by side."""
    from models.activity.train import train_all
    from models.sales.train import train_all as train_sales

    root = tmp_path_factory.mktemp("registry")
    train_all(root, seed=0, n_train=1500, n_test=500, quiet=True)
    train_sales(root, seed=0, n_train=2000, n_test=500, quiet=True)
    _register_user_model(root, tmp_path_factory.mktemp("user-model"))
    return str(root)


def _register_user_model(root: Path, work: Path) -> None:
    """A user's own estimator, fitted outside abserve, registered by the CLI as v4."""
    import sys

    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from models.activity.data import CLASS_LABELS, make_windows

    X, y = make_windows(400, seed=4)
    # Fitted on flattened windows (450 features): the backend flattens for it.
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    est.fit(X.reshape(len(X), -1), y)
    artifact = work / "user-logreg.joblib"
    joblib.dump(est, artifact)
    subprocess.run(
        [sys.executable, "-m", "serve.cli", "register", "activity", "v4",
         "--framework", "sklearn", "--artifact", str(artifact), "--registry", str(root)],
        check=True, capture_output=True, text=True,
    )
    # v9 always answers "Car" (class 4): a shadow whose disagreement is known exactly.
    from sklearn.dummy import DummyClassifier

    from models import Registry, register_user_model

    constant = DummyClassifier(strategy="constant", constant=4).fit(X.reshape(len(X), -1), y)
    dummy = work / "constant-car.joblib"
    joblib.dump(constant, dummy)
    register_user_model(Registry(root), "activity", "v9", "sklearn", dummy,
                        input_shape=(50, 9), class_labels=CLASS_LABELS)


@dataclass
class ServeInstance:
    http_port: int
    metrics_port: int = 0  # Ray's Prometheus export (test_observability scrapes it)
    dashboard_port: int = 0  # the Ray dashboard, on 127.0.0.1
    grpc_port: int = 0  # Serve's gRPC ingress with the OIP service (test_oip_grpc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="session")
def serve_instance() -> Iterator[ServeInstance]:
    """The session's private Ray and Serve; stopped at the end, Serve's HAProxy by PID too."""
    # The suite runs in the config's default ingress mode unless told otherwise.
    mode: Any = os.environ.get("ABSERVE_TEST_INGRESS") or HttpConfig().ingress
    os.environ[TOKEN_ENV] = ADMIN_TOKEN  # router replicas inherit it from the raylet
    metrics_port, dashboard_port, port, grpc_port = free_ports(4)
    with private_ray(
        mode,
        num_cpus=4,
        http_port=port,
        grpc_port=grpc_port,
        num_gpus=2,  # logical GPUs, no hardware: test_gpu_placement checks Ray's assignment
        # The dashboard (for test_observability's Serve page) costs ~2.5 s at start, ~1 GB
        # RSS and ~2 % of a core; metrics reach the export port every 2 s instead of 10 s.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 2000},
        runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
    ):
        yield ServeInstance(port, metrics_port, dashboard_port, grpc_port)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="session")
def app(
    serve_instance: ServeInstance, redis_server: RedisServer, registry_root: str, state_dir: str
) -> Iterator[Any]:
    """The platform as users run it: v1 sklearn baseline 90 %, v2 torch 10 %, v3 keras 0 %."""
    from ray import serve

    from serve.config import parse_config

    config = parse_config(
        {
            "app_name": APP,
            "model": "activity",
            "registry": registry_root,
            "models": [
                {"version": "v1", "num_cpus": 0.2},
                {"version": "v2", "num_cpus": 0.2},
                {"version": "v3", "num_cpus": 0.2},
                {"version": "v4", "num_cpus": 0.1},  # the user's own model
            ],
            "experiment": {
                "name": "itest",
                "baseline": "v1",
                "arms": [
                    {"version": "v1", "weight": 90},
                    {"version": "v2", "weight": 10},
                    {"version": "v3", "weight": 0},
                    {"version": "v4", "weight": 0},
                ],
                "timeout_ms": 5000,
                "breaker": {"failure_threshold": 3, "cooldown_s": 1},
            },
            "cache": {"redis_url": redis_server.url, "ttl_s": 600, "retry_after_s": 0.5},
            "http": {"port": serve_instance.http_port, "max_batch_instances": 64},
            "router": {"num_cpus": 0.2},
            "state": {"dir": state_dir},
        }
    )
    deploy(config)
    yield config
    serve.delete(APP)


def deploy(config: Any, timeout_s: float = 240, route_prefix: str = "/") -> None:
    """Deploy and wait until /ready answers 200 (every arm up)."""
    from ray import serve

    from benchmarks.faulty_model import FaultInjectingDeployment
    from serve.app import build_app

    # The tests' model replicas take set_fault (drills); production's do not.
    app = build_app(config, model_deployment=FaultInjectingDeployment)
    serve.run(app, name=config.app_name, route_prefix=route_prefix)
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{config.http.port}{route_prefix.rstrip('/')}/ready"
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s}s")
        time.sleep(0.5)


def small_app(
    serve_instance: ServeInstance, registry_root: str, state_dir: str, name: str,
    versions: tuple[str, ...], experiment: dict[str, Any], **extra: Any,
) -> Any:
    """The config of a small app beside the session's: tiny replicas, cache off by default."""
    from serve.config import parse_config

    return parse_config({
        "app_name": name,
        "registry": registry_root,
        "models": [{"version": v, "num_cpus": 0.1} for v in versions],
        "experiment": {"name": name, **experiment},
        "cache": {"enabled": False},  # every answer comes from the arm the router chose
        "http": {"port": serve_instance.http_port},
        "router": {"num_cpus": 0.1},
        "state": {"dir": state_dir},
        **extra,
    })


def serve_app(config: Any, serve_instance: ServeInstance, prefix: str) -> Iterator[str]:
    """Deploy at ``prefix``, yield its base URL, delete it afterwards (for module fixtures)."""
    from ray import serve

    deploy(config, route_prefix=prefix)
    yield serve_instance.url + prefix
    serve.delete(config.app_name)


def settled_report(url: str, timeout_s: float = 30) -> dict[str, Any]:
    """The report's arms once two reads a second apart agree (the routers have synced)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def read() -> dict[str, Any]:
        r = httpx.get(f"{url}/admin/report", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json()["arms"])

    last, deadline = read(), time.monotonic() + timeout_s
    while True:
        time.sleep(1.0)
        now = read()
        if now == last:
            return now
        assert time.monotonic() < deadline, "the report did not settle"
        last = now
