"""The CLI as a user runs it: up, predict, traffic, deploy-version, down, and up again.

`abserve up` starts its own Ray head (`ray start --head --block`) and its own
redis-server on free ports, beside the session's test cluster; `abserve down`
stops both by PID. The experiment's weights and the version added by
`deploy-version` must survive the down/up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from models.activity.data import make_windows
from serve.local import free_port, pid_alive
from tests.integration.conftest import ADMIN_TOKEN, ServeInstance, settled_report, small_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path, registry_root: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    http_port = free_port()
    config = {
        "app_name": "clitest",
        "registry": registry_root,
        "models": [{"version": "v1", "num_cpus": 0.1}, {"version": "v2", "num_cpus": 0.1}],
        "experiment": {"baseline": "v1",
                       "arms": [{"version": "v1", "weight": 100}, {"version": "v2", "weight": 0}]},
        "http": {"port": http_port},
        "router": {"num_cpus": 0.1},
        "state": {"dir": str(tmp_path / "state")},
        "cluster": {"gcs_port": free_port(), "dashboard_port": free_port(), "num_cpus": 2},
    }
    path = tmp_path / "abserve.yaml"
    path.write_text(yaml.safe_dump(config))
    # Not the session's Serve settings (its HAProxy and direct-ingress ports are taken).
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")},
        "ABSERVE_STATE_DIR": str(tmp_path / ".abserve"),
        "ABSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        # Each `down` waited out the router replica's direct-ingress drain (Ray's 30 s
        # default, so that HAProxy stops sending it requests first); no traffic runs here
        # during a down, and the CI time is bounded.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }
    env.pop("RAY_ADDRESS", None)

    def run(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "serve.cli", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=timeout,
        )
        print(f"abserve {args[0]}: {time.monotonic() - started:.1f} s")  # where the time goes
        return proc

    info = {"url": f"http://127.0.0.1:{http_port}", "config": str(path),
            "address": f"127.0.0.1:{config['cluster']['gcs_port']}",
            "state_file": tmp_path / ".abserve" / "state.json"}
    yield run, info
    if info["state_file"].exists():  # a failed test still stops what it started
        run("down", timeout=120)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_up_traffic_deploy_version_down_up(cli: tuple[Any, dict[str, Any]]) -> None:
    run, info = cli
    url = info["url"]
    out = _ok(run("up", "--config", info["config"], "--redis-port", str(free_port())))
    assert "ready: every arm answers" in out and url in out
    assert "[RUNNING]" in out  # progress lines while deploying
    state = yaml.safe_load(info["state_file"].read_text())
    ray_pid, redis_pid = state["ray_pid"], state["redis_pid"]

    out = _ok(run("predict"))
    assert "X-Model-Version: v1" in out
    out = _ok(run("traffic", "v1=70", "v2=30"))
    assert "revision 2" in out

    v1_pid = httpx.get(f"{url}/stats").json()["models"]["v1"]["pid"]
    # v4 (the user's scikit-learn model), not v3: a TensorFlow replica costs this test about
    # a minute over its three deploys on 2 cores, and the session's app serves v3 already.
    out = _ok(run("deploy-version", "v4"))
    assert "v4 is ready at weight 0" in out
    stats = httpx.get(f"{url}/stats").json()
    assert stats["models"]["v1"]["pid"] == v1_pid, "deploy-version restarted v1"
    assert httpx.get(f"{url}/ready").json()["arms"] == {"v1": True, "v2": True, "v4": True}
    r = httpx.post(f"{url}/predict", json={"features": [[0.0] * 9] * 50},
                   headers={"X-Model-Version": "v4"})
    assert r.status_code == 200 and r.json()["version"] == "v4"

    out = _ok(run("status"))
    assert "v4" in out and "sklearn" in out and "torch" in out
    # Experiment data through a full down / up: counts, labels, and labels still pending.
    X, y = make_windows(20, seed=12)
    ids = [httpx.post(f"{url}/predict", json={"features": x.tolist()}).json()["request_id"]
           for x in X]
    for rid, label in zip(ids[:10], y[:10], strict=True):
        fb = httpx.post(f"{url}/feedback", json={"request_id": rid, "label": int(label)})
        assert fb.status_code == 200 and fb.json()["counted"], fb.text
    before = settled_report(url)
    _ok(run("down", timeout=120))
    assert not pid_alive(ray_pid) and not pid_alive(redis_pid)
    assert not info["state_file"].exists()

    _ok(run("up", "--config", info["config"], "--redis-port", str(free_port())))
    assert settled_report(url) == before, "the report's counts changed across down / up"
    for rid, label in zip(ids[10:], y[10:], strict=True):  # pending through the restart
        fb = httpx.post(f"{url}/feedback", json={"request_id": rid, "label": int(label)})
        assert fb.status_code == 200 and fb.json()["counted"], fb.text
    again = httpx.post(f"{url}/feedback", json={"request_id": ids[0], "label": int(y[0])})
    assert again.json()["counted"] is False  # counted once, across the restart too
    # `up --address` onto a running cluster: tests/integration/test_multinode.py.
    exp = _ok(run("experiment"))
    assert "v1" in exp and "70%" in exp and "v2" in exp and "30%" in exp and "v4" in exp
    assert httpx.get(f"{url}/ready").json()["arms"] == {"v1": True, "v2": True, "v4": True}
    audit = _ok(run("audit"))
    assert "set_weights" in audit and "add_candidate" in audit
    _ok(run("down", timeout=120))


def test_a_failed_deploy_shows_the_replicas_own_error(
    serve_instance: ServeInstance, registry_root: str, state_dir: str, tmp_path: Path
) -> None:
    """The router's constructor refuses a short admin token (here from admin.token_file, past
    `up`'s precheck): what `up` prints is that ConfigError, not only the deployment's name."""
    from ray import serve

    from serve.app import build_app
    from serve.cli.deploy import wait_running
    from serve.errors import AbserveError

    token = tmp_path / "short-token"
    token.write_text("short\n")
    config = small_app(serve_instance, registry_root, state_dir, "clifail", ("v1",),
                       {"baseline": "v1", "arms": [{"version": "v1", "weight": 100}]},
                       admin={"token_file": str(token)})
    serve.run_many([serve.RunTarget(build_app(config), name="clifail", route_prefix="/clifail")],
                   wait_for_applications_running=False)
    try:
        with pytest.raises(AbserveError) as exc:
            wait_running("clifail", timeout_s=180)
    finally:
        serve.delete("clifail")
    lines = exc.value.message.splitlines()
    assert lines[0].startswith("application clifail DEPLOY_FAILED")
    assert any(line.startswith("  router: ") and "ConfigError: the admin token is shorter than"
               in line for line in lines), exc.value.message
