"""Ray's own tools deploy abserve: `serve deploy` of the file `abserve serve-config` writes,
and `serve run serve.app:app config=...`, onto a cluster started with plain `ray start --head`
(issue 18, the Serve config file).

The head is a `ray start --head --block` child of this test, on free ports (GCS, dashboard,
client server, metrics, agents), with Ray 2.60's token auth given as RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN (a fresh token, so nothing is read from or written to ~/.ray), once in each
ingress mode (throughput: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 in the
environment of `ray start` and of the CLIs, Serve's fixed ports moved to free ones; default),
one cluster after the other, and its working directory the test's own: the config path in
the file is relative and resolves there, on the node that builds the application. A
redis-server of its own replaces the one `abserve up` would start (args.redis_url).
A redeploy shows when Serve rebuilds (only for changed args). Everything started here is
stopped by PID, the processes' descendants (Serve's HAProxy among them) included, even on
failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.local import free_port, port_open, private_ray_env, start_redis, stop_pid
from tests.integration.test_multinode import _clean_env, _descendants, _kill, _wait_port

APP = "servedeploy"
CONFIG = "small.yaml"  # relative: resolved in the head's working directory (the builder's)
BIN = Path(sys.executable).parent
WINDOW = [[0.1] * 9] * 50


@dataclass
class Cluster:
    work: Path
    env: dict[str, str]
    http_port: int
    redis_url: str
    mode: str
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_head(self) -> None:
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--port={self.gcs_port}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}",
               f"--metrics-export-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}"]
        self.popen("head", cmd)
        _wait_port(self.gcs_port, self.procs["head"], 60)
        deadline = time.monotonic() + 60
        while not port_open(self.dashboard_port):
            assert self.procs["head"].poll() is None, self.log("head")
            assert time.monotonic() < deadline, "the dashboard did not open in 60 s"
            time.sleep(0.5)

    def popen(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_default_sigint)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")[-4000:]

    def cli(self, *cmd: str, timeout: float = 120) -> str:
        out = subprocess.run(list(cmd), cwd=self.work, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"{cmd}: rc {out.returncode}\n{out.stdout}\n" \
                                    f"{out.stderr[-3000:]}"
        return out.stdout

    def remember_descendants(self) -> None:
        for proc in self.procs.values():
            self.seen.update(_descendants(proc.pid))

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, wait_s: float = 30) -> int:
        """``sig`` to one process we started, SIGKILL after ``wait_s``; its exit code."""
        self.remember_descendants()
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            stop_pid(proc.pid, timeout_s=5)
            return proc.wait(5)

    def stop_all(self) -> None:
        for name in [n for n in self.procs if n != "head"] + ["head"]:
            if name in self.procs:
                self.stop(name)
        for pid, identity in self.seen.items():  # whatever the head left behind, by PID
            _kill(pid, identity)


@pytest.fixture(scope="module", params=["throughput", "default"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            registry_root: str) -> Iterator[Cluster]:
    mode = request.param
    work = tmp_path_factory.mktemp(f"serve-deploy-{mode}")
    redis_port = free_port()
    redis = start_redis(redis_port, work / "redis.log")
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                     ABSERVE_ADMIN_TOKEN=secrets.token_hex(16))
    env.update(private_ray_env(mode, env))
    c = Cluster(work, env, free_port(), f"redis://127.0.0.1:{redis_port}/0", mode)
    (work / CONFIG).write_text(yaml.safe_dump({
        "app_name": APP,
        "registry": registry_root,
        "models": [{"version": "v1", "num_cpus": 0.1}, {"version": "v4", "num_cpus": 0.1}],
        "experiment": {"name": APP, "baseline": "v1", "timeout_ms": 5000,
                       "arms": [{"version": "v1", "weight": 50},
                                {"version": "v4", "weight": 50}]},
        "cache": {"redis_url": None, "key_prefix": APP},  # args.redis_url fills it in
        "http": {"port": c.http_port, "ingress": mode},
        "router": {"num_cpus": 0.1},
        "state": {"dir": "state"},  # relative to the config file
    }))
    try:
        c.start_head()
        yield c
    finally:
        try:
            c.stop_all()
        finally:
            stop_pid(redis.pid)


def serve_status(c: Cluster) -> dict[str, Any]:
    return dict(yaml.safe_load(c.cli(str(BIN / "serve"), "status", "-a", c.dashboard)))


def wait_running(c: Cluster, app: str, timeout_s: float = 300) -> dict[str, Any]:
    """`serve status` until ``app`` is RUNNING; fails at once on DEPLOY_FAILED."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve_status(c)
        c.remember_descendants()
        found = (status.get("applications") or {}).get(app)
        if found and found["status"] == "RUNNING":
            return status
        assert not found or found["status"] != "DEPLOY_FAILED", yaml.safe_dump(found)
        assert time.monotonic() < deadline, f"{app} not RUNNING in {timeout_s}s:\n" \
                                            f"{yaml.safe_dump(status)}"
        time.sleep(2)


def check_serving(c: Cluster, status: dict[str, Any], app: str) -> None:
    """Every version's deployment healthy in `serve status`; /predict answers from the
    pinned version and from the experiment; the answer lands in the Redis of args.redis_url."""
    deployments = status["applications"][app]["deployments"]
    assert set(deployments) == {"activity-v1", "activity-v4", "router", "controller"}, \
        sorted(deployments)
    assert {d["status"] for d in deployments.values()} == {"HEALTHY"}, deployments
    deadline = time.monotonic() + 60
    while httpx.get(f"{c.url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{c.url}/ready", timeout=10).text
        time.sleep(1)
    r = httpx.post(f"{c.url}/predict", json={"features": WINDOW},
                   headers={"X-Model-Version": "v4"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "v4" and r.headers["X-Fallback"] == "false"
    r = httpx.post(f"{c.url}/predict", json={"features": WINDOW}, timeout=30)
    assert r.status_code == 200 and r.json()["version"] in ("v1", "v4"), r.text
    import redis

    client = redis.Redis.from_url(c.redis_url, socket_timeout=2)
    deadline = time.monotonic() + 10
    while not client.keys(f"{APP}:activity:v4:*"):  # cache writes run in the background
        assert time.monotonic() < deadline, "no cache key in args.redis_url's Redis"
        time.sleep(0.2)


def test_serve_deploy_of_the_generated_file(cluster: Cluster) -> None:
    c = cluster
    out = c.cli(sys.executable, "-m", "serve.cli", "serve-config", "-c", CONFIG,
                "--redis-url", c.redis_url, "-o", "serve.yaml")
    assert "serve deploy serve.yaml" in out
    generated = yaml.safe_load((c.work / "serve.yaml").read_text())
    assert generated["applications"][0]["args"] == {"config": CONFIG,
                                                    "redis_url": c.redis_url}
    c.cli(str(BIN / "serve"), "deploy", "serve.yaml", "-a", c.dashboard)
    started = time.monotonic()
    status = wait_running(c, APP)
    print(f"\nserve deploy: {APP} RUNNING after {time.monotonic() - started:.1f}s")
    print(yaml.safe_dump(status["applications"][APP]["deployments"]))
    check_serving(c, status, APP)
    assert status["proxies"], status  # Serve's proxy, on the file's http_options port
    # The cluster does check the token: a CLI without RAY_AUTH_MODE sends none and is refused.
    no_mode = {k: v for k, v in c.env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run([str(BIN / "serve"), "status", "-a", c.dashboard], cwd=c.work,
                             env=no_mode, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "applications" not in refused.stdout, refused.stdout
    print(f"serve status without RAY_AUTH_MODE: rc {refused.returncode}, "
          f"{refused.stderr.strip().splitlines()[-1:]}")
    haproxy = [pid for pid, (name, _) in c.seen.items() if name == "haproxy"]
    assert bool(haproxy) == (c.mode == "throughput"), (c.mode, haproxy)


def pids(c: Cluster) -> dict[str, int]:
    """The router replica's PID and one replica's per version, from the router's /stats."""
    stats = httpx.get(f"{c.url}/stats", timeout=30).json()
    return {"router": stats["pid"], **{v: m["pid"] for v, m in stats["models"].items()}}


def batch_status(c: Cluster) -> int:
    return httpx.post(f"{c.url}/predict/batch", json={"instances": [WINDOW, WINDOW]},
                      timeout=30).status_code


def arms_seen(c: Cluster, n: int) -> dict[str, int]:
    """The arm of ``n`` requests from ``n`` distinct users (sticky keys, no pin)."""
    seen: dict[str, int] = {}
    for i in range(n):
        r = httpx.post(f"{c.url}/predict", json={"features": WINDOW},
                       headers={"X-User-Id": f"user-{i}-{time.monotonic_ns()}"}, timeout=30)
        assert r.status_code == 200, r.text
        seen[r.json()["arm"]] = seen.get(r.json()["arm"], 0) + 1
    return seen


def test_serve_deploy_of_new_weights_is_a_lightweight_update(cluster: Cluster) -> None:
    """Weights changed in the config, the Serve config file regenerated, `serve deploy` again:
    the args are the same, so Serve applies the controller's new user_config (its
    reconfigure) without rebuilding; the routers follow the controller's new revision; no
    replica restarts (issue 18, item 2)."""
    if cluster.mode != "throughput":
        pytest.skip("not the ingress's: once, in the throughput mode, is enough (CI time)")
    c = cluster
    original = (c.work / CONFIG).read_text()
    before = pids(c)
    assert set(arms_seen(c, 40)) == {"v1", "v4"}  # 50/50
    edited = yaml.safe_load(original)
    edited["experiment"]["arms"] = [{"version": "v1", "weight": 0},
                                    {"version": "v4", "weight": 100}]
    try:
        (c.work / CONFIG).write_text(yaml.safe_dump(edited))
        c.cli(sys.executable, "-m", "serve.cli", "serve-config", "-c", CONFIG,
              "--redis-url", c.redis_url, "-o", "serve.yaml")
        generated = yaml.safe_load((c.work / "serve.yaml").read_text())["applications"][0]
        assert generated["args"] == {"config": CONFIG, "redis_url": c.redis_url}
        [controller] = generated["deployments"]
        assert controller["name"] == "controller"
        assert controller["user_config"]["experiment"]["arms"][1] == {
            "version": "v4", "weight": 100.0, "timeout_ms": None}
        c.cli(str(BIN / "serve"), "deploy", "serve.yaml", "-a", c.dashboard)
        deployed = time.monotonic()
        while arms_seen(c, 10) != {"v4": 10}:
            assert time.monotonic() - deployed < 30, "the new weights were not applied"
        followed_s = time.monotonic() - deployed
        assert arms_seen(c, 40) == {"v4": 40}
        print(f"\nserve deploy of new weights: traffic followed {followed_s:.2f}s after the "
              "command returned")
        # Serve's declarative path, then the routers' poll (state.poll_interval_s 0.5 s): 2 s
        # is the promise; measured 0.5-1.5 s here.
        assert followed_s < 2.0, followed_s
        assert pids(c) == before  # the router's and every version's replica: no restart
        assert wait_running(c, APP)["applications"][APP]["status"] == "RUNNING"
    finally:
        (c.work / CONFIG).write_text(original)
        c.cli(sys.executable, "-m", "serve.cli", "serve-config", "-c", CONFIG,
              "--redis-url", c.redis_url, "-o", "serve.yaml")
        c.cli(str(BIN / "serve"), "deploy", "serve.yaml", "-a", c.dashboard)
    deadline = time.monotonic() + 30
    while set(arms_seen(c, 40)) != {"v1", "v4"}:  # back to 50/50, still no restart
        assert time.monotonic() < deadline, "the original weights were not applied"
    assert pids(c) == before


def admin(c: Cluster, method: str, path: str, body: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    r = httpx.request(method, f"{c.url}{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {c.env['ABSERVE_ADMIN_TOKEN']}"})
    assert r.status_code == 200, (path, r.status_code, r.text)
    return dict(r.json())


def weights(c: Cluster) -> dict[str, float]:
    return {k: float(v) for k, v in admin(c, "GET", "/admin/experiment")[
        "effective_weights"].items()}


def diff(c: Cluster) -> tuple[int, str]:
    """`abserve diff` of the config file against the live experiment: rc, output."""
    out = subprocess.run([sys.executable, "-m", "serve.cli", "diff", "-c", CONFIG,
                          "--url", c.url], cwd=c.work, env=c.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    return out.returncode, out.stdout


def redeploy(c: Cluster, data: dict[str, Any]) -> None:
    """The config file edited, its Serve config file regenerated, `serve deploy` of it."""
    (c.work / CONFIG).write_text(yaml.safe_dump(data))
    c.cli(sys.executable, "-m", "serve.cli", "serve-config", "-c", CONFIG,
          "--redis-url", c.redis_url, "-o", "serve.yaml")
    c.cli(str(BIN / "serve"), "deploy", "serve.yaml", "-a", c.dashboard)


def until(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError, AssertionError, KeyError):
            value = check()
            if value:
                return value
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_serve_deploy_applies_the_reconciliation_rule(cluster: Cluster) -> None:
    """docs/experiments.md, "The config file is the desired state", case by case against the
    real Serve controller: a live change is an override of the config revision it was made
    on, kept across a restart of the controller; deploying a new revision replaces it and
    the audit log says what it replaced; a canary declared in the file starts with its
    revision, and the next revision rolls it back. `abserve diff` says which is which."""
    c = cluster
    if c.mode != "throughput":
        pytest.skip("the rule is the controller's, not the ingress's: one mode is enough")
    original = (c.work / CONFIG).read_text()
    data = yaml.safe_load(original)
    before = pids(c)
    try:
        assert diff(c)[0] == 0
        # 1. A live change on the deployed revision: an override, which diff shows.
        admin(c, "PUT", "/admin/weights", {"weights": {"v1": 20, "v4": 80}})
        assert weights(c) == {"v1": 20.0, "v4": 80.0}
        rc, out = diff(c)
        assert rc == 1 and "override this config revision" in out, out
        # 2. The controller restarts (its process killed): same revision, the override kept.
        old_pid = admin(c, "GET", "/admin/canary")["controller_pid"]
        os.kill(old_pid, signal.SIGKILL)
        until("the controller did not come back",
              lambda: admin(c, "GET", "/admin/canary")["controller_pid"] != old_pid, 120)
        live = admin(c, "GET", "/admin/experiment")
        assert weights(c) == {"v1": 20.0, "v4": 80.0} and live["live_changes"] == 1, live
        # 3. A new revision deployed: it replaces the override, and the audit log says so.
        data["experiment"]["arms"] = [{"version": "v1", "weight": 30},
                                      {"version": "v4", "weight": 70}]
        redeploy(c, data)
        until("the new revision was not adopted",
              lambda: weights(c) == {"v1": 30.0, "v4": 70.0})
        entries = admin(c, "GET", "/admin/audit?limit=5")["entries"]
        deploy = [e for e in entries if e["operation"] == "deploy"][-1]  # oldest first
        assert deploy["who"] == "config" and deploy["replaced"]["live_changes"] == 1, deploy
        rc, out = diff(c)
        assert rc == 0 and "the live experiment is what the file declares" in out, out
        # 4. A canary declared in the file starts with that revision...
        data["experiment"]["arms"] = [{"version": "v1", "weight": 100},
                                      {"version": "v4", "weight": 0}]
        data["canary"] = {"candidate": "v4", "steps": [10, 100], "interval_s": 3600,
                          "min_requests": 1_000_000}
        redeploy(c, data)
        canary = until("the declared canary did not start", lambda: (
            s := admin(c, "GET", "/admin/canary"))["state"]
            and s["state"]["status"] == "running" and s)
        assert canary["plan"]["candidate"] == "v4" and canary["state"]["weight"] == 10
        assert weights(c) == {"v1": 90.0, "v4": 10.0}
        rc, out = diff(c)  # the declared plan, running: only its step's weights differ
        assert rc == 1 and "override" in out and "\n  canary" not in out, out
        # ...and the next revision, which declares none, rolls it back.
        del data["canary"]
        redeploy(c, data)
        until("the canary was not rolled back",
              lambda: admin(c, "GET", "/admin/canary")["state"]["status"] == "rolled_back")
        until("the weights were not the file's", lambda: weights(c) == {"v1": 100.0, "v4": 0.0})
        entries = admin(c, "GET", "/admin/audit?limit=5")["entries"]
        deploy = [e for e in entries if e["operation"] == "deploy"][-1]  # oldest first
        assert deploy["canary_replaced"] == "v4", deploy
    finally:
        (c.work / CONFIG).write_text(original)
        redeploy(c, yaml.safe_load(original))
    until("the original weights were not applied",
          lambda: weights(c) == {"v1": 50.0, "v4": 50.0})
    after = pids(c)
    assert after == before, (before, after)  # only the controller restarted: no model replica


def test_serve_deploy_rebuilds_only_when_the_args_change(cluster: Cluster) -> None:
    """What docs/operations.md says: Serve (Ray 2.60) rebuilds an application from a file
    only when its import_path, args or runtime_env change, not when the config file that
    args.config names does; a rebuild then restarts every deployment of the application."""
    if cluster.mode != "throughput":
        pytest.skip("not the ingress's: once, in the throughput mode, is enough (CI time)")
    c = cluster
    original = (c.work / CONFIG).read_text()
    before = pids(c)
    assert batch_status(c) == 200
    edited = yaml.safe_load(original)
    edited["http"]["max_batch_instances"] = 1
    try:
        (c.work / CONFIG).write_text(yaml.safe_dump(edited))
        c.cli(str(BIN / "serve"), "deploy", "serve.yaml", "-a", c.dashboard)
        time.sleep(10)
        wait_running(c, APP)
        assert batch_status(c) == 200 and pids(c) == before  # the same args: nothing rebuilt
        (c.work / "small-2.yaml").write_text(yaml.safe_dump(edited))
        c.cli(sys.executable, "-m", "serve.cli", "serve-config", "-c", "small-2.yaml",
              "--redis-url", c.redis_url, "-o", "serve-2.yaml")
        c.cli(str(BIN / "serve"), "deploy", "serve-2.yaml", "-a", c.dashboard)
        deadline = time.monotonic() + 240
        while True:  # the old router answers until the new one is up
            with contextlib.suppress(httpx.HTTPError):
                if batch_status(c) == 422:
                    break
            assert time.monotonic() < deadline, "serve-2.yaml was not applied"
            time.sleep(2)
        wait_running(c, APP)
        after = pids(c)
        assert set(after) == set(before)
        assert all(after[k] != before[k] for k in before), (before, after)
    finally:
        (c.work / CONFIG).write_text(original)
    # Keep Serve (and its proxy) up for the next test: an empty declarative config deletes
    # the applications that config files deployed, and only those.
    (c.work / "empty.yaml").write_text(yaml.safe_dump(
        {"http_options": yaml.safe_load((c.work / "serve.yaml").read_text())["http_options"],
         "applications": []}))
    c.cli(str(BIN / "serve"), "deploy", "empty.yaml", "-a", c.dashboard)
    deadline = time.monotonic() + 60
    while APP in (serve_status(c).get("applications") or {}):
        assert time.monotonic() < deadline, "the application was not deleted"
        time.sleep(1)


def test_serve_run_builds_on_the_driver(cluster: Cluster) -> None:
    """`serve run serve.app:app config=... redis_url=...` in the background: the driver builds
    the application (its cwd resolves the config), Serve runs it; SIGINT stops it."""
    if cluster.mode != "throughput":
        pytest.skip("not the ingress's: once, in the throughput mode, is enough (CI time)")
    c = cluster
    proc = c.popen("serve-run", [
        str(BIN / "serve"), "run", "serve.app:app", f"config={CONFIG}",
        f"redis_url={c.redis_url}", "--name", APP, "--route-prefix", "/",
        "-a", f"127.0.0.1:{c.gcs_port}"])
    started = time.monotonic()
    deadline = started + 300
    while True:
        assert proc.poll() is None, c.log("serve-run")
        apps = serve_status(c).get("applications") or {}
        if apps.get(APP, {}).get("status") == "RUNNING":
            break
        assert time.monotonic() < deadline, c.log("serve-run")
        time.sleep(2)
    print(f"\nserve run: {APP} RUNNING after {time.monotonic() - started:.1f}s")
    check_serving(c, wait_running(c, APP), APP)
    # Ctrl-C: serve run shuts Serve down on the cluster and exits.
    signals = _signal_state(proc.pid)
    assert c.stop("serve-run", signal.SIGINT, wait_s=90) == 0, (signals, c.log("serve-run"))
    assert not (serve_status(c).get("applications") or {}), (signals, c.log("serve-run"))


def _default_sigint() -> None:
    """In the child before exec: SIGINT's default action. A suite started in the background
    of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and a Python started
    with it ignored never raises KeyboardInterrupt: serve run then ignored the test's Ctrl-C
    (SigIgn 0x1001007 in a CI run launched that way, 2026-12-03)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_state(pid: int) -> str:
    """The process's blocked, ignored and caught signal masks (SigBlk, SigIgn, SigCgt)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return ", ".join(ln.replace("\t", " ") for ln in lines
                     if ln.startswith(("SigBlk", "SigIgn", "SigCgt")))
