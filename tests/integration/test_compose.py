"""docker-compose.yml proven by execution, without a Docker engine (issue 18, item 6).

The services' own command lines, health checks and environment are read from
docker-compose.yml (with compose's `$` interpolation, no host variables set) and
run as local processes: redis, a Ray head that deploys the compose config, one
Ray worker that joins it with the token, and Prometheus with the compose's scrape
config. Then: a prediction answered over HTTP, a replica on the worker, each
health check's own command passing, Prometheus scraping every target, Ray's
Grafana dashboards where the grafana service reads them, the ingress flags in
both nodes' Ray processes, and a worker whose raylet dies exiting (so its
container would restart).

What a container maps, this test maps itself; every substitution is in MAPPED
and in the tables below, and each must find its text (a renamed port or path in
the compose file fails the test instead of running unmapped):

- host names ``ray-head``, ``redis`` -> 127.0.0.1 (compose's DNS);
- every port a container binds -> a free loopback port, one set per node (each
  container has a network namespace of its own): GCS 6385, dashboard 8265,
  HTTP 8000, metrics 8080, Redis 6379, Prometheus 9090, HAProxy 9101 and 8404; and
  the ports two Ray nodes on one machine would otherwise share, as flags and
  variables the compose file leaves at their defaults (dashboard agent, runtime
  env agent, Ray client server; Serve's fallback proxy, direct-ingress ranges);
  ``--node-ip-address=127.0.0.1`` (a container's own address), 0.0.0.0 binds
  -> 127.0.0.1;
- paths: /app -> a directory laid out like the image's /app (the compose config
  with the hosts and ports above; ``registry`` -> the session's trained
  registry, so `abserve validate --check-registry` skips training); the volumes
  ray-auth and ray-tmp -> directories (ray-tmp as the head's ``--temp-dir``,
  which is /tmp/ray in the container), a worker's own /tmp/ray -> its own
  directory; /etc/prometheus/prometheus.yml -> the compose's file with the
  hosts and paths above; HOME -> an empty directory (the image's holds no Ray
  token); ``ray``, ``abserve`` and ``python`` from this virtualenv.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.local import free_port, free_ports, stop_pid
from serve.local.env import ray_env
from serve.local.haproxy import haproxy_config_dirs, haproxy_pids, stop_haproxy
from serve.local.ports import free_range
from tests.integration.test_multinode import _descendants, _proc_table

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
APP = "abserve"  # app_name of deploy/compose/abserve.compose.yaml
MAPPED = (
    "hosts ray-head, redis -> 127.0.0.1; each node's ports -> free ports; "
    "/app, volumes, HOME -> temporary directories"
)
PROBE = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
from serve.cli.scaling import replica_counts
nodes = [{"id": n["NodeID"], "alive": n["Alive"],
          "head": "node:__internal_head__" in n["Resources"]} for n in ray.nodes()]
replicas = {k: list(v.nodes) for k, v in replica_counts(sys.argv[2]).items()}
print("PROBE " + json.dumps({"nodes": nodes, "replicas": replicas}))
"""


# ---------------------------------------------------------------- compose, as compose reads it

_INTERPOLATION = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$$`` is one ``$``; ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR}`` and ``$VAR`` from ``environ``."""

    def one(m: re.Match[str]) -> str:
        dollar, name, op, arg, bare = m.groups()
        if dollar:
            return "$"
        name = name or bare
        value = environ.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise AssertionError(f"compose would stop: ${{{name}}}: {arg}")
            return arg
        return value or ""

    return _INTERPOLATION.sub(one, text)


def compose_services(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml's services, merge keys resolved and variables interpolated."""
    env = environ or {}

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return interpolate(value, env)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return dict(walk(yaml.safe_load(COMPOSE.read_text()))["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mapped(text: str, table: Mapping[str, str], where: str) -> str:
    """``text`` with each key of ``table`` replaced; every key must occur in it."""
    for old, new in table.items():
        assert old in text, f"{where}: {old!r} is not in {text!r}; update this test's map"
        text = text.replace(old, new)
    return text


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return list(test[1:])


# ---------------------------------------------------------------- processes, by PID


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@dataclass
class Compose:
    """The compose services as local processes; everything stopped by PID at the end."""

    work: Path
    registry: str
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)
    haproxy: set[int] = field(default_factory=set)
    haproxy_dirs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        names = ("gcs", "dashboard", "http", "redis", "prometheus", "head_metrics",
                 "worker_metrics", "haproxy_metrics", "haproxy_stats")
        self.ports.update(zip(names, free_ports(len(names)), strict=True))
        self.services = compose_services()
        self.app = self.work / "app"
        self.volumes = {v: self.work / v for v in ("ray-auth", "ray-tmp", "prometheus-data")}
        for d in [*self.volumes.values(), self.work / "worker-tmp", self.app / "deploy/compose"]:
            d.mkdir(parents=True, exist_ok=True)
        (self.app / "registry").symlink_to(self.registry)
        p = self.ports
        config = (ROOT / "deploy/compose/abserve.compose.yaml").read_text()
        (self.app / "deploy/compose/abserve.compose.yaml").write_text(mapped(config, {
            "redis://redis:6379/0": f"redis://127.0.0.1:{p['redis']}/0",
            "host: 0.0.0.0": "host: 127.0.0.1",
            "port: 8000": f"port: {p['http']}",
            "address: ray-head:6385": f"address: 127.0.0.1:{p['gcs']}",
            "gcs_port: 6385": f"gcs_port: {p['gcs']}",
            "dashboard_port: 8265": f"dashboard_port: {p['dashboard']}",
        }, "deploy/compose/abserve.compose.yaml"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['gcs']}"

    # -- per-service maps: what differs between a container and this machine

    def _node_flags(self, head: bool) -> str:
        flags = ["--node-ip-address=127.0.0.1",
                 f"--temp-dir={self.volumes['ray-tmp'] if head else self.work / 'worker-tmp'}",
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}"]
        if head:
            flags.append(f"--ray-client-server-port={free_port()}")
        return " ".join(flags)

    def _text_map(self, name: str) -> dict[str, str]:
        p = self.ports
        if name == "ray-head":
            return {
                "ray start ": f"ray start {self._node_flags(head=True)} ",
                "--port=6385": f"--port={p['gcs']}",
                "127.0.0.1:6385": self.address,
                "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
                "--dashboard-port=8265": f"--dashboard-port={p['dashboard']}",
                "--metrics-export-port=8080": f"--metrics-export-port={p['head_metrics']}",
                "/app/registry": str(self.app / "registry"),
            }
        assert name == "ray-worker", name
        return {
            "ray start ": f"ray start {self._node_flags(head=False)} ",
            "ray-head:6385": self.address,
            "--metrics-export-port=8080": f"--metrics-export-port={p['worker_metrics']}",
        }

    def _health_map(self, name: str) -> dict[str, str]:
        p = self.ports
        if name == "ray-head":
            return {"127.0.0.1:6385": self.address, "127.0.0.1:8000": f"127.0.0.1:{p['http']}"}
        return {"ray-head:6385": self.address,
                "127.0.0.1:8080": f"127.0.0.1:{p['worker_metrics']}"}

    def _env(self, name: str) -> dict[str, str]:
        """The service's environment (mapped) over a bare one: PATH with this venv, a HOME."""
        home = self.work / f"home-{name}"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k in ("LANG", "LC_ALL", "TZ", "TF_CPP_MIN_LOG_LEVEL")}
        env.update(PATH=f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", HOME=str(home),
                   PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
        if name not in ("ray-head", "ray-worker"):
            return env
        # The teardown's SIGTERM stops a node at once: Ray 2.60 first drains it, up to 30 s,
        # and the teardown waited 20 s of that on the worker (test_multinode does the same).
        # The compose file sets no drain timeout, so the services run Ray's default.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        p = self.ports
        own = environment(self.services[name])
        table = {
            "/var/lib/ray-auth": str(self.volumes["ray-auth"]),
            "/tmp/ray": str(self.volumes["ray-tmp"]),
            "http://prometheus:9090": f"http://127.0.0.1:{p['prometheus']}",
        }
        for key, value in own.items():
            for old, new in table.items():
                value = value.replace(old, new)
            own[key] = value
        for var, default, port in (("RAY_SERVE_HAPROXY_METRICS_PORT", "9101", "haproxy_metrics"),
                                   ("RAY_SERVE_HAPROXY_STATS_PORT", "8404", "haproxy_stats")):
            assert own.get(var) == default, f"{name}: {var}={own.get(var)}; update the map"
            own[var] = str(p[port])
        # Serve's fixed default ports of the throughput mode, one set per node, none of
        # them in another's range or on a port picked above.
        picked = list(p.values())
        for var in ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
            port = free_port()
            while port in picked:
                port = free_port()
            picked.append(port)
            own[var] = str(port)
        for proto in ("HTTP", "GRPC"):
            low = free_range(50, avoid=picked)
            picked.extend(range(low, low + 51))
            own[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"] = str(low)
            own[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"] = str(low + 50)
        return {**env, **own}

    # -- the services

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def start_redis(self) -> None:
        argv = [*self.services["redis"]["command"],
                "--port", str(self.ports["redis"]), "--bind", "127.0.0.1"]
        self._spawn("redis", argv, self._env("redis"), self.work)

    def start_ray(self, name: str) -> None:
        command = self.services[name]["command"]
        assert command[:2] == ["bash", "-c"], command
        script = mapped(command[2], self._text_map(name), f"{name}.command")
        self._spawn(name, ["bash", "-c", script], self._env(name), self.app)

    def start_prometheus(self) -> None:
        svc = self.services["prometheus"]
        text = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
        config = self.work / "prometheus.yml"
        config.write_text(mapped(text, {
            "ray-head:8080": f"127.0.0.1:{self.ports['head_metrics']}",
            "ray-head:9101": f"127.0.0.1:{self.ports['haproxy_metrics']}",
            "/tmp/ray/": f"{self.volumes['ray-tmp']}/",
        }, "deploy/prometheus/prometheus.yml"))
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
        args = mapped("\0".join(svc["command"]), {
            "/etc/prometheus/prometheus.yml": str(config),
            "=/prometheus": f"={self.volumes['prometheus-data']}",
        }, "prometheus.command").split("\0")
        self._spawn("prometheus",
                    ["prometheus", *args,
                     f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}"],
                    self._env("prometheus"), self.work)

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        argv = healthcheck_argv(self.services[name])
        if name == "redis":
            argv = [argv[0], "-p", str(self.ports["redis"]), *argv[1:]]  # options first
        else:
            argv = [*argv[:2], mapped(argv[2], self._health_map(name), f"{name}.healthcheck")]
        timeout = float(self.services[name]["healthcheck"]["timeout"].rstrip("s"))
        return subprocess.run(argv, env=self._env(name), cwd=self.app, capture_output=True,
                              text=True, timeout=timeout)

    def remember(self) -> None:
        for name in ("ray-head", "ray-worker"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                self.seen.update(_descendants(proc.pid))
                self.haproxy.update(haproxy_pids(proc.pid))
        self.haproxy_dirs.update(haproxy_config_dirs(self.haproxy))

    def stop_all(self) -> None:
        self.remember()
        for name in ("prometheus", "ray-worker", "ray-head", "redis"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop_pid(proc.pid, timeout_s=20)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        table = _proc_table()
        for pid, identity in self.seen.items():  # anything the nodes left behind, by PID
            now = table.get(pid)
            if now is not None and (now[1], now[2]) == identity:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # Last: a Serve proxy left alive until the kills above may have reloaded HAProxy.
        stop_haproxy(self.haproxy, config_dirs=self.haproxy_dirs)


def _wait(what: str, check: Any, timeout_s: float, compose: Compose,
          watch: tuple[str, ...] = ("ray-head",)) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        for name in watch:
            proc = compose.procs[name]
            assert proc.poll() is None, \
                f"{name} exited ({proc.returncode}) before {what}:\n{compose.log(name)[-4000:]}"
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, \
            f"{what}: not after {timeout_s:.0f}s\n" + "\n".join(
                f"--- {n}\n{compose.log(n)[-3000:]}" for n in watch)
        time.sleep(1)


def _prometheus_targets(compose: Compose) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"http://127.0.0.1:{compose.ports['prometheus']}/api/v1/targets",
                      timeout=5)
        return list(r.json()["data"]["activeTargets"])
    except (httpx.HTTPError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def compose(registry_root: str) -> Iterator[tuple[Compose, dict[str, Any]]]:
    # Short: Ray's Unix sockets live under the temp dir (108 bytes at most).
    work = Path(tempfile.mkdtemp(prefix="cmp-", dir="/tmp"))
    c = Compose(work, registry_root)
    timings: dict[str, Any] = {"work": str(work)}
    try:
        started = time.monotonic()
        c.start_redis()
        c.start_ray("ray-head")
        c.start_ray("ray-worker")
        c.start_prometheus()
        _wait("the worker joins", lambda: "Ray runtime started" in c.log("ray-worker"),
              120, c, ("ray-head", "ray-worker"))
        timings["worker_joined_s"] = time.monotonic() - started
        _wait("the deploy step", lambda: "ready: every arm answers" in c.log("ray-head"),
              300, c, ("ray-head", "ray-worker"))
        timings["ready_s"] = time.monotonic() - started
        c.remember()
        yield c, timings
    finally:
        c.stop_all()
        print(f"\ncompose processes' logs: {work}")


def _probe(c: Compose) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE, c.address, APP], cwd=ROOT,
                         env=c._env("ray-head"), capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, out.stderr[-3000:]
    return dict(json.loads(lines[-1].removeprefix("PROBE ")))


def test_compose_cluster_answers_with_a_replica_on_the_worker(
        compose: tuple[Compose, dict[str, Any]]) -> None:
    c, timings = compose
    # The token: written once by the head into the ray-auth volume, read there by the worker.
    token = (c.volumes["ray-auth"] / "auth_token").read_text().strip()
    assert len(token) >= 32
    r = httpx.post(f"{c.url}/predict", json={"features": [[0.1] * 9] * 50}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "activity" and body["version"] in ("v1", "v2", "v3"), body
    answered: dict[str, int] = {}
    for i in range(20):
        r = httpx.post(f"{c.url}/predict", json={"features": [[0.01 * i] * 9] * 50},
                       headers={"X-User-Id": f"u{i}"}, timeout=30)
        assert r.status_code == 200, r.text
        answered[r.json()["version"]] = answered.get(r.json()["version"], 0) + 1

    probe = _probe(c)
    alive = [n for n in probe["nodes"] if n["alive"]]
    assert len(alive) == 2, probe["nodes"]
    [worker] = [n["id"] for n in alive if not n["head"]]
    on_worker = sorted(d for d, nodes in probe["replicas"].items() if worker in nodes)
    assert {"router", "activity-v1", "activity-v2", "activity-v3"} <= set(probe["replicas"])
    assert on_worker, f"no replica on the worker {worker}: {probe['replicas']}"
    print(f"\nworker joined after {timings['worker_joined_s']:.1f}s, ready after "
          f"{timings['ready_s']:.1f}s; answered by {answered}; on the worker: {on_worker}")


def test_compose_health_checks_pass(compose: tuple[Compose, dict[str, Any]]) -> None:
    c, _ = compose
    for name in ("redis", "ray-head", "ray-worker"):
        started = time.monotonic()
        result = c.healthcheck(name)
        assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"
        print(f"\n{name} health check: rc 0 in {time.monotonic() - started:.1f}s")
    assert c.healthcheck("redis").stdout.strip() == "PONG"


def test_compose_nodes_run_the_ingress_mode_and_the_token(
        compose: tuple[Compose, dict[str, Any]]) -> None:
    """The compose config's ingress mode, in both nodes' raylets; HAProxy under the head."""
    c, _ = compose
    from serve.config import load_config

    mode = load_config(c.app / "deploy/compose/abserve.compose.yaml").http.ingress
    wanted = {**ray_env(mode), "RAY_AUTH_MODE": "token"}
    for name in ("ray-head", "ray-worker"):
        raylets = [pid for pid, (n, _) in _descendants(c.procs[name].pid).items()
                   if n == "raylet"]
        assert len(raylets) == 1, (name, raylets)
        env = _environ(raylets[0])
        assert {k: env.get(k) for k in wanted} == wanted, name
    assert mode == "throughput"
    assert haproxy_pids(c.procs["ray-head"].pid), "no HAProxy under the head"


def test_compose_prometheus_scrapes_every_target(
        compose: tuple[Compose, dict[str, Any]]) -> None:
    """Prometheus scrapes both nodes' exporters, HAProxy, and holds each node's own series.

    Job "ray" comes from Ray's discovery file, which also lists the head's autoscaler and
    dashboard exporters, so a count of its targets says nothing about the worker (a CI run
    passed ">= 2 ray targets" with three targets on the head and none on the worker). The
    worker is named by its exporter port. The file is re-read every refresh_interval (30 s;
    its path is a symlink, so inotify does not see Ray replace it), then a scrape (10 s)."""
    c, _ = compose
    ports = {"head": c.ports["head_metrics"], "worker": c.ports["worker_metrics"]}

    def node_series() -> dict[str, float]:
        try:
            r = httpx.get(f"http://127.0.0.1:{c.ports['prometheus']}/api/v1/query",
                          params={"query": 'ray_node_cpu_count{job="ray"}'}, timeout=5)
            return {m["metric"]["instance"]: float(m["value"][1])
                    for m in r.json()["data"]["result"]}
        except (httpx.HTTPError, ValueError, KeyError):
            return {}

    def all_up() -> tuple[list[dict[str, Any]], dict[str, float]] | None:
        targets = _prometheus_targets(c)
        up = {(t["labels"]["job"], int(t["scrapeUrl"].split(":")[2].split("/")[0]))
              for t in targets if t["health"] == "up"}
        series = node_series()
        reporting = {int(instance.rsplit(":", 1)[1]) for instance in series}
        ok = ({("ray", ports["head"]), ("ray", ports["worker"]), ("ray-head", ports["head"]),
               ("haproxy", c.ports["haproxy_metrics"])} <= up
              and set(ports.values()) <= reporting)
        return (targets, series) if ok else None

    targets, series = _wait("Prometheus scrapes both nodes, HAProxy, and each node's series",
                            all_up, 120, c, ("ray-head", "ray-worker", "prometheus"))
    print("\n" + "\n".join(f"{t['labels']['job']:9} {t['scrapeUrl']} {t['health']}"
                           for t in targets) + f"\nray_node_cpu_count: {series}")
    by_port = {int(i.rsplit(":", 1)[1]): v for i, v in series.items()}
    assert by_port[ports["head"]] >= 1 and by_port[ports["worker"]] >= 1, series


def test_compose_grafana_finds_rays_dashboards(compose: tuple[Compose, dict[str, Any]]) -> None:
    """The grafana service's provider folder, through its volumes, holds Ray's dashboards."""
    c, _ = compose
    grafana = c.services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    providers = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/dashboards"]
         / "dashboards.yml").read_text())["providers"]
    [ray] = [p["options"]["path"] for p in providers if p["name"] == "ray"]
    [(target, volume)] = [(t, s) for t, s in mounts.items() if ray.startswith(t + "/")]
    assert volume == "ray-tmp" and "ray-tmp:/tmp/ray" in c.services["ray-head"]["volumes"]
    folder = c.volumes[volume] / ray.removeprefix(target + "/")
    dashboards = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert {"default_grafana_dashboard.json", "serve_grafana_dashboard.json"} <= set(dashboards)
    assert all(d.get("uid") for d in dashboards.values())


def test_compose_worker_exits_with_its_raylet(compose: tuple[Compose, dict[str, Any]]) -> None:
    """Ray is the worker's foreground process: its raylet killed, the service exits (and
    `restart: unless-stopped` would start the container again). Runs last: it takes the
    worker down."""
    c, _ = compose
    worker = c.procs["ray-worker"]
    c.remember()
    [raylet] = [pid for pid, (n, _) in _descendants(worker.pid).items() if n == "raylet"]
    os.kill(raylet, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while worker.poll() is None:
        assert time.monotonic() < deadline, "the worker's `ray start` outlived its raylet"
        time.sleep(0.5)
    assert worker.returncode != 0


def test_interpolation_follows_compose() -> None:
    assert interpolate("a $$b $${c} ${D:-x} ${E-y} $F", {"E": ""}) == "a $b ${c} x  "
    with pytest.raises(AssertionError, match="set it"):
        interpolate("${G:?set it}", {})
    assert shlex.split(interpolate("kill -TERM $$$$", {})) == ["kill", "-TERM", "$$"]
