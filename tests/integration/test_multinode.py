"""Two Ray nodes on one machine: `abserve up --address`, a version pinned to node 2, and
node 2's raylet killed under load (chaos item 9 of issue 5).

The nodes are `ray start --block` children of this test (head: 1 CPU and the custom
resource abserve_head; node 2: 1 CPU and abserve_node2), each on free ports, with
a redis-server of its own; `abserve up --address` runs as a subprocess with its own
ABSERVE_STATE_DIR. The baseline v1 and the router are pinned to the head, the
candidate v4 to node 2 (`resources:` in the config). Serve's HTTP proxy runs on the
head only (two proxies on one machine would share one port). Everything started
here is stopped by PID, the processes' descendants included, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serve.local import free_port, start_redis, stop_pid

ROOT = Path(__file__).resolve().parents[2]
APP = "multinode"
CANDIDATE_DEPLOYMENT = "activity-v4"
PROBE = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
from serve.cli.scaling import replica_counts
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]}
         for n in ray.nodes()]
replicas = {k: list(v.nodes) for k, v in replica_counts(sys.argv[2]).items()}
print("PROBE " + json.dumps({"nodes": nodes, "replicas": replicas}))
"""


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, name, start time in clock ticks), from /proc (Linux; no psutil here)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        table[int(stat.parent.name)] = (int(rest[1]), text[text.index("(") + 1:text.rindex(")")],
                                        int(rest[19]))
    return table


def _descendants(pid: int) -> dict[int, tuple[str, int]]:
    """{pid: (name, start time)} of every descendant of ``pid``."""
    table = _proc_table()
    out: dict[int, tuple[str, int]] = {}
    frontier = {pid}
    while frontier:
        kids = {c: (n, t) for c, (pp, n, t) in table.items() if pp in frontier}
        out.update(kids)
        frontier = set(kids)
    return out


def _kill(pid: int, identity: tuple[str, int] | None = None) -> None:
    """SIGKILL by PID; with ``identity``, only if the PID is still that process (no reuse)."""
    if identity is not None:
        now = _proc_table().get(pid)
        if now is None or (now[1], now[2]) != identity:
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the session cluster's RAY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A test's node stops at once on SIGTERM: Ray 2.60 drains a node first, up to 30 s
    # (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S), which only lengthened each teardown here
    # (test_compose's nodes too).
    env.update(PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               **extra)
    return env


@dataclass
class TwoNodes:
    work: Path
    gcs_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)  # descendants seen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _ray_start(self, name: str, args: list[str], **env: str) -> None:
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block",
               "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", *args]
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_clean_env(**env))

    def start_head(self) -> None:
        """The head, on a fresh GCS port again when its GCS could not bind the one chosen
        (free_port's pick can be taken before the GCS binds it: seen once in CI, where
        another process then answered on that port and node 2 never joined)."""
        for _attempt in range(3):
            log = self.work / "head.log"
            offset = log.stat().st_size if log.exists() else 0
            self._ray_start("head", [
                "--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                '--resources={"abserve_head": 4}'])
            deadline = time.monotonic() + 60
            proc = self.procs["head"]
            while proc.poll() is None and time.monotonic() < deadline:
                if b"Ray runtime started" in log.read_bytes()[offset:]:
                    _wait_port(self.gcs_port, proc, 30)
                    return
                time.sleep(0.5)
            self.stop("head")
            self.gcs_port = free_port()
        raise AssertionError(f"the head did not start in 3 tries: {log.read_text()[-2000:]}")

    def start_node2(self) -> None:
        # The head turned token auth on (Ray 2.60's `ray start`); a joining node opts in.
        log = self.work / "node2.log"
        offset = log.stat().st_size if log.exists() else 0
        self._ray_start("node2", [f"--address={self.address}",
                                  '--resources={"abserve_node2": 4}'], RAY_AUTH_MODE="token")
        deadline = time.monotonic() + 60
        while b"Ray runtime started" not in log.read_bytes()[offset:]:
            proc = self.procs["node2"]
            assert proc.poll() is None, f"node 2 exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "node 2 did not start in 60 s"
            time.sleep(0.5)

    def remember_descendants(self) -> None:
        for proc in self.procs.values():
            self.seen.update(_descendants(proc.pid))

    def node2_raylet(self) -> int:
        children = _descendants(self.procs["node2"].pid)
        raylets = [pid for pid, (name, _) in children.items() if name == "raylet"]
        assert len(raylets) == 1, children
        return raylets[0]

    def stop(self, name: str) -> None:
        """SIGTERM to `ray start --block` (it stops its node), SIGKILL after a short wait."""
        self.remember_descendants()
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_pid(proc.pid, timeout_s=15)
            proc.wait(5)

    def stop_all(self) -> None:
        for name in ("node2", "head"):
            self.stop(name)
        for pid, identity in self.seen.items():  # anything the nodes left behind, by PID
            _kill(pid, identity)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            time.sleep(2)  # the head writes its auth token right after
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"GCS port {port} not open after {timeout_s}s")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, registry_root: str
             ) -> Iterator[tuple[TwoNodes, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("multinode")
    nodes = TwoNodes(work)
    redis = None
    cli_env = _clean_env(ABSERVE_STATE_DIR=str(work / ".abserve"))
    http_port = free_port()
    config = {
        "app_name": APP,
        "registry": registry_root,
        "models": [
            {"version": "v1", "num_cpus": 0.1, "resources": {"abserve_head": 0.1}},
            {"version": "v4", "num_cpus": 0.1, "resources": {"abserve_node2": 0.1}},
        ],
        "experiment": {
            "name": APP, "baseline": "v1", "timeout_ms": 500,
            # The baseline gets time: on a starved CPU a slow baseline is a 503.
            "arms": [{"version": "v1", "weight": 50, "timeout_ms": 5000},
                     {"version": "v4", "weight": 50}],
            "breaker": {"failure_threshold": 3, "cooldown_s": 1},
        },
        "http": {"port": http_port, "ingress": "default", "proxy_location": "HeadOnly"},
        "router": {"num_cpus": 0.1, "resources": {"abserve_head": 0.1}},
        "state": {"dir": str(work / "state")},
    }

    def cli(*args: str, timeout: float = 300) -> str:
        proc = subprocess.run([sys.executable, "-m", "serve.cli", *args], cwd=work,
                              env=cli_env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout}\n" \
                                     f"{proc.stderr[-3000:]}"
        return proc.stdout

    try:
        redis_port = free_port()
        redis = start_redis(redis_port, work / "redis.log")
        config["cache"] = {"redis_url": f"redis://127.0.0.1:{redis_port}/0",
                           "key_prefix": APP}
        (work / "abserve.yaml").write_text(yaml.safe_dump(config))
        nodes.start_head()
        nodes.start_node2()
        started = time.monotonic()
        up = cli("up", "--config", "abserve.yaml", "--address", nodes.address,
                 "--timeout", "150", timeout=200)
        nodes.remember_descendants()
        info = {"url": f"http://127.0.0.1:{http_port}", "cli": cli, "up": up,
                "up_s": time.monotonic() - started}
        yield nodes, info
    finally:
        try:
            if (work / ".abserve" / "state.json").exists():
                subprocess.run([sys.executable, "-m", "serve.cli", "down"], cwd=work,
                               env=cli_env, capture_output=True, timeout=60)
        finally:
            nodes.stop_all()
            if redis is not None:
                stop_pid(redis.pid)


def _probe(address: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE, address, APP], cwd=ROOT,
                         env=_clean_env(RAY_AUTH_MODE="token"), capture_output=True,
                         text=True, timeout=120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, out.stderr[-3000:]
    return dict(json.loads(lines[-1].removeprefix("PROBE ")))


def _node2_id(probe: dict[str, Any]) -> str:
    [node] = [n["id"] for n in probe["nodes"]
              if n["alive"] and "abserve_node2" in n["resources"]]
    return str(node)


def test_up_address_pins_the_candidate_to_node2(
        deployed: tuple[TwoNodes, dict[str, Any]]) -> None:
    nodes, info = deployed
    assert "starting a local Ray cluster" not in info["up"]
    assert "ready: every arm answers" in info["up"]
    probe = _probe(nodes.address)
    alive = [n for n in probe["nodes"] if n["alive"]]
    assert len(alive) == 2, probe["nodes"]
    node2 = _node2_id(probe)
    head = next(n["id"] for n in alive if n["id"] != node2)
    assert probe["replicas"][CANDIDATE_DEPLOYMENT] == [node2]
    assert probe["replicas"]["activity-v1"] == [head]
    assert probe["replicas"]["router"] == [head]
    r = httpx.post(f"{info['url']}/predict", json={"features": [[0.0] * 9] * 50},
                   headers={"X-Model-Version": "v4"}, timeout=30)
    assert r.status_code == 200 and r.headers["X-Fallback"] == "false"
    assert r.json()["version"] == "v4"
    print(f"\nabserve up --address: {info['up_s']:.1f}s")

    out = info["cli"]("status")
    print(out)
    lines = out.splitlines()
    assert "replicas" in lines[1] and "share" in lines[1] and "fallbk" in lines[1]
    row = {ln.split()[0]: ln.split() for ln in lines[2:4]}
    assert row["v1*"][2:4] == ["1/1", "50%"] and row["v4"][2:4] == ["1/1", "50%"], out
    assert row["v4"][4:6] == ["100.0%", "1"], out  # share: the one request above, pinned
    assert "router replicas 1/1" in out and "cache (redis): hit rate" in out


def _load(url: str, stop: threading.Event, results: list[tuple[int, str, str]], seed: int
          ) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            x = rng.normal(size=(50, 9)).round(4).tolist()  # unique: never a cache hit
            try:
                r = client.post(f"{url}/predict", json={"features": x})
                results.append((r.status_code, r.headers.get("X-Model-Version", ""),
                                r.headers.get("X-Fallback", "")
                                if r.status_code == 200 else f"{time.monotonic():.1f} {r.text}"))
            except httpx.HTTPError as exc:
                results.append((-1, type(exc).__name__, ""))
            time.sleep(0.02)


def _candidate_answers(url: str) -> bool:
    try:
        r = httpx.post(f"{url}/predict", json={"features": [[0.1] * 9] * 50},
                       headers={"X-Model-Version": "v4"}, timeout=5)
    except httpx.HTTPError:
        return False
    return (r.status_code == 200 and r.headers.get("X-Fallback") == "false"
            and r.json().get("version") == "v4")


def _candidate_pid(url: str) -> int | None:
    """PID of a v4 replica, from the router's /stats (null while v4 has none)."""
    try:
        model = httpx.get(f"{url}/stats", timeout=10).json()["models"].get("v4")
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return None if model is None else int(model["pid"])


@pytest.mark.chaos
def test_node2_raylet_killed_under_load_no_client_errors_and_candidate_returns(
        deployed: tuple[TwoNodes, dict[str, Any]]) -> None:
    nodes, info = deployed
    url = info["url"]
    assert _candidate_answers(url)
    stop, results = threading.Event(), []  # type: ignore[var-annotated]
    clients = [threading.Thread(target=_load, args=(url, stop, results, i), daemon=True)
               for i in range(3)]
    try:
        for c in clients:
            c.start()
        time.sleep(3)
        before = len(results)
        assert any(v == "v4" and fb == "false" for _, v, fb in results), "v4 never answered"
        old_pid = _candidate_pid(url)
        assert old_pid in _descendants(nodes.procs["node2"].pid), old_pid
        raylet = nodes.node2_raylet()
        nodes.remember_descendants()
        _kill(raylet)  # SIGKILL, by PID: the raylet of the node this test started
        killed_at = time.monotonic()
        print(f"\nkilled at {killed_at:.1f}")
        time.sleep(8)  # load while node 2's replica is gone
        during = results[before:]
        nodes.stop("node2")  # `ray start --block` of node 2, and whatever it left
        orphan = old_pid in _proc_table()
        nodes.start_node2()
        rejoined_at = time.monotonic()
        print(f"node 2 restarted at {rejoined_at:.1f}")
        back = None
        while time.monotonic() - rejoined_at < 90:
            # Served again by a replica on the rejoined node, not by a leftover process.
            pid = _candidate_pid(url)
            if (pid is not None and pid != old_pid
                    and pid in _descendants(nodes.procs["node2"].pid)
                    and _candidate_answers(url)):
                back = time.monotonic() - rejoined_at
                break
            time.sleep(1)
    finally:
        stop.set()
        for c in clients:
            c.join(15)
    nodes.remember_descendants()
    failed = [r for r in results if r[0] != 200]
    fallbacks = sum(1 for r in during if r[2] == "true")
    print(f"\n{len(results)} requests, {len(failed)} failed; {len(during)} in the 8 s after the "
          f"kill ({fallbacks} answered by the baseline as fallback); candidate answering again "
          f"{back if back is None else round(back, 1)} s after node 2 was restarted "
          f"({time.monotonic() - killed_at:.0f} s after the kill); old v4 replica process "
          f"{'still alive' if orphan else 'gone'} 8 s after the kill")
    assert not failed, failed[:10]
    assert fallbacks > 0 or all(v == "v1" for _, v, _ in during), "v4 kept answering after kill?"
    assert back is not None and back < 60, f"candidate not back within 60 s: {back}"
    probe = _probe(nodes.address)
    assert probe["replicas"][CANDIDATE_DEPLOYMENT] == [_node2_id(probe)], probe
    out = info["cli"]("scale-history", "--watch", "2")
    print(out)
    assert f"{CANDIDATE_DEPLOYMENT} 1/1" in out.splitlines()[-1]
    status = info["cli"]("status")
    print(status)
    assert "v4" in status and "1/1" in status
